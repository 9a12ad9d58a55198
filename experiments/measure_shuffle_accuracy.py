"""Measure speculative token shuffling's prediction accuracy q and co-location c on the tiny MoE.

Speculative MoE (arXiv 2503.04398) predicts the GPU a token will need at the next MoE layer from a
token-to-expert table (context-independent affinity) and an inter-layer table (the expert at
layer l-1 -> the expert at layer l), keeping the more confident of the two. This script fits both
tables on the first half of the tiny MoE's held-out windows and scores the second half:
- q: the predicted GPU holds the token's top-1 expert (what `Parallel.accuracy` means);
- c: the token's other expert shares the top-1 expert's GPU (`Parallel.colocation`), for random
  (round-robin) placement and for expert grouping (the balanced split that maximises
  co-activation on the fit half, by brute force over the 8 experts);
- the local share of token-expert pairs after shuffling, measured directly, against the
  analytic model's formula q(1 + (k-1)c)/k + (1 - q)/ep with the measured q and c.

    .venv/bin/python experiments/measure_shuffle_accuracy.py   # ~1 min on CPU; writes JSON + prints

Writes experiments/data/cpu/shuffle_tiny.json.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import routing_stats as rs  # noqa: E402  (held-out split and routing of the tiny MoE)
import train_tiny_moe as tm  # noqa: E402

OUT = HERE / "data" / "cpu" / "shuffle_tiny.json"


def fit_tables(top, tokens, E):
    """Per layer: token id -> (top-1 expert, confidence); previous top-1 -> (top-1, confidence)."""
    L, V = top.shape[0], int(tokens.max()) + 1
    tok_tab, layer_tab = [], []
    for layer in range(L):
        first = top[layer, ..., 0].ravel()
        counts = np.zeros((V, E))
        np.add.at(counts, (tokens.ravel(), first), 1)
        tok_tab.append(_argmax_conf(counts))
        if layer == 0:
            layer_tab.append(None)
            continue
        prev = top[layer - 1, ..., 0].ravel()
        c2 = np.zeros((E, E))
        np.add.at(c2, (prev, first), 1)
        layer_tab.append(_argmax_conf(c2))
    return tok_tab, layer_tab


def _argmax_conf(counts):
    total = counts.sum(1)
    return counts.argmax(1), np.where(total > 0, counts.max(1) / np.maximum(total, 1), 0.0)


def predict(top, tokens, tok_tab, layer_tab, layer):
    """Predicted top-1 expert per position: the more confident of the two tables."""
    e_tok, c_tok = (x[tokens.ravel()] for x in tok_tab[layer])
    if layer_tab[layer] is None:
        return e_tok
    prev = top[layer - 1, ..., 0].ravel()
    e_lay, c_lay = (x[prev] for x in layer_tab[layer])
    return np.where(c_lay > c_tok, e_lay, e_tok)


def grouped_placement(top, E, ep):
    """Balanced split of E experts into ep GPUs maximising co-activation within a GPU (fit half)."""
    co = np.zeros((E, E))
    flat = top.reshape(top.shape[0], -1, top.shape[-1])
    for a, b in itertools.combinations(range(top.shape[-1]), 2):
        np.add.at(co, (flat[..., a].ravel(), flat[..., b].ravel()), 1)
    co = co + co.T
    best, best_score = None, -1.0
    for assign in _balanced(E, ep):
        same = assign[:, None] == assign[None, :]
        score = co[same].sum()
        if score > best_score:
            best, best_score = assign, score
    return best


def _balanced(E, ep):
    """Every split of E experts into ep unordered groups of E/ep (expert 0 in group 0, ...)."""
    size = E // ep

    def rec(left, groups):
        if not left:
            yield groups
            return
        head, rest = left[0], left[1:]
        for mates in itertools.combinations(rest, size - 1):
            remain = [e for e in rest if e not in mates]
            yield from rec(remain, [*groups, (head, *mates)])

    for groups in rec(list(range(E)), []):
        assign = np.empty(E, dtype=int)
        for g, members in enumerate(groups):
            assign[list(members)] = g
        yield assign


def score(top, pred_expert, gpu_of, ep, layer):
    k = top.shape[-1]
    experts = top[layer].reshape(-1, k)
    dest = gpu_of[experts]  # [N, k]
    g_pred = gpu_of[pred_expert]
    q = float(np.mean(g_pred == dest[:, 0]))
    c = float(np.mean(dest[:, 1:] == dest[:, :1]))
    local = float(np.mean(dest == g_pred[:, None]))
    formula = q * (1 + (k - 1) * c) / k + (1 - q) / ep
    return {"q": q, "c": c, "local_measured": local, "local_formula": formula}


def main() -> int:
    torch.set_num_threads(2)
    model, cfg = tm.load_pretrained(tm.DEFAULT_OUT)
    stream, _ = rs.heldout_stream(tm.DEFAULT_OUT, "")
    windows = tm.heldout_windows(stream, cfg.max_position_embeddings)
    top = rs.route(model, windows)  # [L, W, T, k], top-1 first
    E, k, L = cfg.num_local_experts, cfg.num_experts_per_tok, cfg.num_hidden_layers
    half = windows.shape[0] // 2
    fit, test = top[:, :half], top[:, half:]
    tok_tab, layer_tab = fit_tables(fit, windows[:half], E)
    rows = []
    for ep in (2, 4):
        placements = {"random": np.arange(E) % ep, "grouped": grouped_placement(fit, E, ep)}
        for name, gpu_of in placements.items():
            for layer in range(L):
                pred = predict(test, windows[half:], tok_tab, layer_tab, layer)
                rows.append(
                    {
                        "ep": ep,
                        "placement": name,
                        "layer": layer,
                        **score(test, pred, gpu_of, ep, layer),
                    }
                )
    summary = {}
    for ep in (2, 4):
        for name in ("random", "grouped"):
            sel = [r for r in rows if r["ep"] == ep and r["placement"] == name and r["layer"] > 0]
            summary[f"ep{ep}-{name}"] = {
                key: float(np.mean([r[key] for r in sel]))
                for key in ("q", "c", "local_measured", "local_formula")
            }
    doc = {
        "schema": "specmoe.shuffle/1",
        "model": "tiny (experiments/tiny_moe)",
        "num_experts": E,
        "top_k": k,
        "layers": L,
        "fit_windows": int(half),
        "test_windows": int(windows.shape[0] - half),
        "tokens_scored_per_layer": int(test[0].size // k),
        "command": "python experiments/measure_shuffle_accuracy.py",
        "note": "means over layers 1..L-1 (layer 0 has no inter-layer table)",
        "summary": summary,
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print("| ep | placement | q | c | local share measured | formula | baseline 1/ep |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for key, s in summary.items():
        ep, name = key[2], key.split("-")[1]
        print(
            f"| {ep} | {name} | {s['q']:.3f} | {s['c']:.3f} | {s['local_measured']:.3f} | "
            f"{s['local_formula']:.3f} | {1 / int(ep):.3f} |"
        )
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
