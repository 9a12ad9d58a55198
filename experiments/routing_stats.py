"""Measure the tiny MoE's routing on held-out text and write specmoe/data/tiny/routing.json.

What the workload and simulator models need from a real router:
- inclusion probabilities p[l][e] (the chance one token uses expert e in layer l; Σ_e = top_k);
- step-to-step reuse: the fraction of a token's experts the previous token also used, against the
  chance level Σ_e p_e² / k of independent tokens;
- distinct experts among n tokens, measured on batches of independent positions (compared with
  U(n) = Σ_e [1 − (1 − p_e)^n]) and on runs of n consecutive positions of one sequence (what a
  verification of n draft positions touches).

    python experiments/routing_stats.py            # uses experiments/tiny_moe/, ~1 minute on CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_tiny_moe as tm  # the one home of the model forward and the data split

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "specmoe" / "data" / "tiny" / "routing.json"
BATCH_SIZES = [2**i for i in range(9)]  # 1 .. 256


def heldout_stream(model_dir: Path, stdlib: str) -> tuple[np.ndarray, dict]:
    """Re-derive the held-out split from the training summary (same seed, same files)."""
    summary = json.loads((model_dir / "train_summary.json").read_text())
    data = summary["data"]
    root = Path(stdlib or data["stdlib_root"])
    _, held = tm.split_files(tm.stdlib_files(root), data["heldout_frac"], data["seed"])
    names = [str(p.relative_to(root)) for p in held]
    if names != summary["heldout_files"]:
        raise ValueError(f"held-out files under {root} differ from those in train_summary.json")
    stream = tm.encode_docs(tm.load_tokenizer(model_dir), tm.read_texts(held))
    return stream, {
        "stdlib_root": str(root),
        "heldout_files": len(held),
        "seed": data["seed"],
        "heldout_frac": data["heldout_frac"],
    }


@torch.no_grad()
def route(model: tm.TinyMixtral, windows: np.ndarray, batch: int = 16) -> np.ndarray:
    """Top-k expert ids for every position: int array [L, windows, T, k]."""
    out = []
    for i in range(0, len(windows), batch):
        _, routing = model(torch.from_numpy(windows[i : i + batch]), with_routing=True)
        b, t = windows[i : i + batch].shape
        out.append(np.stack([top_i.reshape(b, t, -1).numpy() for _, top_i in routing]))
    return np.concatenate(out, axis=1)


def inclusion_probs(top: np.ndarray, num_experts: int) -> np.ndarray:
    """p[l, e] = fraction of tokens whose top-k includes e (rows sum to k)."""
    n_layers, k = top.shape[0], top.shape[-1]
    flat = top.reshape(n_layers, -1, k)
    return np.stack([np.bincount(f.reshape(-1), minlength=num_experts) / len(f) for f in flat])


def step_reuse(top: np.ndarray, num_experts: int) -> np.ndarray:
    """Per layer: mean over consecutive positions of |S_t ∩ S_{t-1}| / k."""
    onehot = np.zeros(top.shape[:-1] + (num_experts,), dtype=bool)
    np.put_along_axis(onehot, top, True, axis=-1)
    shared = (onehot[:, :, 1:] & onehot[:, :, :-1]).sum(-1)
    return shared.mean(axis=(1, 2)) / top.shape[-1]


def distinct_independent(top, num_experts, sizes, samples, rng) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of distinct experts per layer among n positions drawn without replacement."""
    n_layers, k = top.shape[0], top.shape[-1]
    flat = top.reshape(n_layers, -1, k)
    mean = np.zeros((n_layers, len(sizes)))
    std = np.zeros_like(mean)
    for j, n in enumerate(sizes):
        counts = np.zeros((n_layers, samples))
        for s in range(samples):
            pos = rng.choice(flat.shape[1], size=n, replace=False)
            sel = flat[:, pos].reshape(n_layers, -1)
            counts[:, s] = [len(np.unique(row)) for row in sel]
        mean[:, j], std[:, j] = counts.mean(1), counts.std(1)
    return mean, std


def distinct_consecutive(top, sizes, samples, rng) -> np.ndarray:
    """Mean distinct experts per layer among n consecutive positions of one window."""
    n_layers, n_win, t, _ = top.shape
    mean = np.zeros((n_layers, len(sizes)))
    for j, n in enumerate(sizes):
        w = rng.integers(0, n_win, size=samples)
        s0 = rng.integers(0, t - n + 1, size=samples)
        for layer in range(n_layers):
            mean[layer, j] = np.mean(
                [len(np.unique(top[layer, a, b : b + n])) for a, b in zip(w, s0)]
            )
    return mean


def formula_u(p: np.ndarray, sizes) -> np.ndarray:
    n = np.asarray(sizes, dtype=float)
    return (1.0 - (1.0 - p[:, :, None]) ** n[None, None, :]).sum(axis=1)


def summarise(top: np.ndarray, cfg: tm.TinyMoEConfig, samples: int, seed: int) -> dict:
    e, k = cfg.num_local_experts, cfg.num_experts_per_tok
    rng = np.random.default_rng(seed)
    p = inclusion_probs(top, e)
    reuse = step_reuse(top, e)
    chance = (p**2).sum(1) / k
    excess = np.clip((reuse - chance) / (1.0 - chance), 0.0, 1.0)
    ind_mean, ind_std = distinct_independent(top, e, BATCH_SIZES, samples, rng)
    cons = distinct_consecutive(top, BATCH_SIZES, samples, rng)
    sorted_p = -np.sort(-p, axis=1)
    entropy = -(p / k * np.log(p / k + 1e-300)).sum(1) / np.log(e)
    return {
        "inclusion_probs": p.tolist(),
        "skew": {
            "max_over_uniform": (p.max(1) / (k / e)).tolist(),
            "min_over_uniform": (p.min(1) / (k / e)).tolist(),
            "normalised_entropy": entropy.tolist(),
            "coverage_top_n": (np.cumsum(sorted_p, 1) / k).tolist(),
            "coverage_top_n_definition": "share of routed (token, expert) slots served by the "
            "layer's N most used experts, N = 1..E",
        },
        "step_reuse": {
            "per_layer": reuse.tolist(),
            "chance_per_layer": chance.tolist(),
            "excess_per_layer": excess.tolist(),
            "definition": "reuse = mean over consecutive positions of |S_t ∩ S_t-1|/k; "
            "chance = Σ_e p_e²/k (independent tokens); "
            "excess = (reuse − chance)/(1 − chance), i.e. reuse = "
            "x + (1 − x)·chance for a slot copied from the previous "
            "token with probability x",
        },
        "temporal_reuse": float(reuse.mean()),
        "temporal_reuse_excess": float(excess.mean()),
        "distinct_experts": {
            "n": BATCH_SIZES,
            "samples_per_n": samples,
            "independent_measured": ind_mean.tolist(),
            "independent_std": ind_std.tolist(),
            "formula": formula_u(p, BATCH_SIZES).tolist(),
            "consecutive_measured": cons.tolist(),
            "definition": "mean distinct experts per layer among n token positions; independent: "
            "positions drawn at random from all held-out positions; consecutive: "
            "n adjacent positions of one sequence; formula: U(n) = Σ_e [1 − (1 − p_e)^n]",
        },
    }


def print_table(res: dict, cfg: tm.TinyMoEConfig):
    d = res["distinct_experts"]
    print(
        "layer  max p/unif  min p/unif  reuse  chance  excess   "
        + "  ".join(f"U({n}) meas/form/consec" for n in (4, 16, 64))
    )
    for layer in range(cfg.num_hidden_layers):
        cols = [d["n"].index(n) for n in (4, 16, 64)]
        u = "  ".join(
            f"{d['independent_measured'][layer][c]:5.2f}/{d['formula'][layer][c]:5.2f}/"
            f"{d['consecutive_measured'][layer][c]:5.2f}"
            for c in cols
        )
        s, r = res["skew"], res["step_reuse"]
        print(
            f"{layer:5d}  {s['max_over_uniform'][layer]:10.2f}  "
            f"{s['min_over_uniform'][layer]:10.2f}  {r['per_layer'][layer]:5.3f}  "
            f"{r['chance_per_layer'][layer]:6.3f}  {r['excess_per_layer'][layer]:6.3f}   {u}"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model-dir", default=str(tm.DEFAULT_OUT))
    ap.add_argument("--stdlib", default="", help="standard library root (default: as in training)")
    ap.add_argument("--seq-len", type=int, default=0, help="window length (default: model's max)")
    ap.add_argument("--samples", type=int, default=2000, help="sampled batches per n")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    model, cfg = tm.load_pretrained(model_dir)
    seq_len = args.seq_len or cfg.max_position_embeddings
    stream, data = heldout_stream(model_dir, args.stdlib)
    windows = tm.heldout_windows(stream, seq_len)
    top = route(model, windows)
    res = summarise(top, cfg, args.samples, args.seed)
    doc = {
        "schema": "specmoe.routing/1",
        "model": {
            "name": "tiny",
            "path": str(model_dir.relative_to(REPO))
            if model_dir.is_relative_to(REPO)
            else str(model_dir),
            "num_layers": cfg.num_hidden_layers,
            "num_experts": cfg.num_local_experts,
            "top_k": cfg.num_experts_per_tok,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
        },
        "data": {**data, "tokens": int(windows.size), "windows": len(windows), "seq_len": seq_len},
        "command": (
            "python experiments/routing_stats.py "
            + shlex.join(argv if argv is not None else sys.argv[1:])
        ).strip(),
        "date": datetime.date.today().isoformat(),
        "torch_version": torch.__version__,
        "num_layers": cfg.num_hidden_layers,
        "num_experts": cfg.num_local_experts,
        "top_k": cfg.num_experts_per_tok,
        **res,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(res, cfg)
    print(f"tokens {windows.size}; wrote {out}")


if __name__ == "__main__":
    main()
