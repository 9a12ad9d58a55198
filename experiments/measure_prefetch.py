"""Measure the overlap policy's next-layer prediction on the shipped tiny MoE; write \
specmoe/data/tiny/prefetch.json.

The engine's `overlap` provider, while layer l−1 runs, applies layer l's router to layer l−1's MoE
input and prefetches the top-k experts of every token (the union over the batch). This script runs
that policy greedily on held-out prompts (the training script's file split and tokenizer, prompt
selection of measure_acceptance.py) at batch 1 and batch 8 and reads, per decode step and layer
l >= 1, two of the engine's own records:
  - needed N: the experts the real router picked (the routing record, `record_routing=True`);
  - prefetched P: the experts the provider prefetched for that layer (the store's fetch log,
    kind 'prefetch'; overlap frees every slot after use, so each prediction is fetched in full).
and reports, pooled over steps (a ratio of sums):
  hit rate  h = Σ|P ∩ N| / Σ|N|   (specmoe's Policy.prefetch_hit_rate: the share of needed
                                    next-layer experts fetched ahead; the rest go on demand)
  precision   = Σ|P ∩ N| / Σ|P|   (the share of prefetched bytes that were used)
  chance      = Σ|P|·|N|/E / Σ|N| (h of a random prediction of the same size)
Layer 0 has no layer before it and is fetched on demand (the models count it so too). The totals
are checked against the provider's counters (prefetch_useful, prefetch_wasted) and the store's
hits. A 95% bootstrap interval resamples generate() calls (one prompt at batch 1, eight at batch 8).

    python experiments/measure_prefetch.py                 # ~1 minute on one CPU thread
    python experiments/measure_prefetch.py --prompts 8 --new-tokens 16 --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure_acceptance as ma  # held-out prompts, hashing, atomic writes
import train_tiny_moe as tm  # the one home of the data split and tokenizer
from specmoe.engine.generate import Engine
from specmoe.engine.tracer import device_fingerprint
from specmoe.engine.weights import load_weights

from specmoe.inputs.policies import make_policy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "specmoe" / "data" / "tiny" / "prefetch.json"
PRIMARY_BATCH = 1  # per-token prediction; larger batches only widen both sets (h rises)


# ----------------------------------------------------------------------------- one generate() call


def layer_steps(res, log) -> list[dict]:
    """Per (phase, step, layer >= 1): needed experts (routing record) and prefetched (store log)."""
    pre: dict[tuple, set] = defaultdict(set)
    for step, phase, layer, expert, kind in log:
        if kind == "prefetch":
            pre[(phase, step, layer)].add(expert)
    rows = []
    for rec in res.routing:
        if rec["layer"] == 0:
            continue
        key = (rec["phase"], rec["step"], rec["layer"])
        rows.append(
            {
                "phase": key[0],
                "step": key[1],
                "layer": key[2],
                "needed": {e for ids in rec["ids"] for e in ids},
                "prefetched": pre.pop(key, set()),
            }
        )
    if pre:
        raise RuntimeError(f"prefetches without a routed layer: {sorted(pre)[:3]}")
    return rows


def check_counters(rows: list[dict], res) -> dict:
    """Our per-layer sets must add up to the provider's and the store's own counters."""
    useful = sum(len(r["needed"] & r["prefetched"]) for r in rows)
    wasted = sum(len(r["prefetched"] - r["needed"]) for r in rows)
    pc = res.stats.policy_counters
    got = {
        "prefetch_useful": pc.get("prefetch_useful", 0),
        "prefetch_wasted": pc.get("prefetch_wasted", 0),
        "store_hits": res.stats.hits,
        "store_prefetched": res.stats.prefetched,
    }
    want = {
        "prefetch_useful": useful,
        "prefetch_wasted": wasted,
        "store_hits": useful,
        "store_prefetched": useful + wasted,
    }
    if got != want:
        raise RuntimeError(
            f"engine counters {got} disagree with the routing record / fetch log {want}"
        )
    return got


def run_batches(
    eng: Engine, prompts: list[list[int]], batch: int, new_tokens: int
) -> tuple[list, dict]:
    """rows tagged with their call index; the engine counters summed over calls."""
    rows, counters = [], defaultdict(int)
    for call, s in enumerate(range(0, len(prompts), batch)):
        res = eng.generate(prompts[s : s + batch], new_tokens, temperature=0.0, record_routing=True)
        r = layer_steps(res, eng.store.stats.log)
        for k, v in check_counters(r, res).items():
            counters[k] += v
        rows += [dict(x, call=call) for x in r]
    return rows, dict(counters)


# ----------------------------------------------------------------------------- statistics


def sums(rows: list[dict], experts: int) -> np.ndarray:
    """[useful, needed, prefetched, chance-useful] summed over rows."""
    out = np.zeros(4)
    for r in rows:
        n, p = len(r["needed"]), len(r["prefetched"])
        out += (len(r["needed"] & r["prefetched"]), n, p, p * n / experts)
    return out


def rates(s: np.ndarray) -> dict:
    useful, needed, pre, chance = s
    return {
        "hit_rate": useful / needed if needed else None,
        "precision": useful / pre if pre else None,
        "chance_hit_rate": chance / needed if needed else None,
        "needed": int(needed),
        "prefetched": int(pre),
        "useful": int(useful),
    }


def bootstrap(rows: list[dict], experts: int, reps: int, seed: int) -> dict:
    """95% intervals of h and precision, resampling whole generate() calls."""
    calls = sorted({r["call"] for r in rows})
    per = np.array([sums([r for r in rows if r["call"] == c], experts) for c in calls])
    idx = np.random.default_rng(seed).integers(0, len(calls), (reps, len(calls)))
    tot = per[idx].sum(axis=1)
    h, prec = tot[:, 0] / tot[:, 1], tot[:, 0] / tot[:, 2]
    return {
        "hit_rate": np.percentile(h, [2.5, 97.5]).tolist(),
        "precision": np.percentile(prec, [2.5, 97.5]).tolist(),
        "units": len(calls),
    }


def summarize(rows: list[dict], cfg, reps: int, seed: int) -> dict:
    dec = [r for r in rows if r["phase"] == "decode"]
    out = rates(sums(dec, cfg.experts))
    out["per_layer"] = {
        str(l): rates(sums([r for r in dec if r["layer"] == l], cfg.experts))
        for l in range(1, cfg.layers)
    }
    out["ci95"] = bootstrap(dec, cfg.experts, reps, seed)
    out["decode_steps"] = len({(r["call"], r["step"]) for r in dec})
    out["mean_needed_per_layer"] = out["needed"] / len(dec)
    out["mean_prefetched_per_layer"] = out["prefetched"] / len(dec)
    out["prefill"] = {
        k: v
        for k, v in rates(sums([r for r in rows if r["phase"] == "prefill"], cfg.experts)).items()
        if k in ("hit_rate", "precision")
    }
    return out


# ----------------------------------------------------------------------------- output


def table(by_batch: dict, layers: int) -> str:
    head = (
        ["batch", "steps"]
        + [f"h L{l}" for l in range(1, layers)]
        + ["h mean", "h 95% CI", "precision", "chance h"]
    )
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for b, d in by_batch.items():
        ci = d["ci95"]["hit_rate"]
        cells = [b, str(d["decode_steps"])] + [
            f"{d['per_layer'][str(l)]['hit_rate']:.3f}" for l in range(1, layers)
        ]
        cells += [
            f"{d['hit_rate']:.3f}",
            f"{ci[0]:.3f}–{ci[1]:.3f}",
            f"{d['precision']:.3f}",
            f"{d['chance_hit_rate']:.3f}",
        ]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", default=str(tm.DEFAULT_OUT))
    p.add_argument(
        "--prompts", type=int, default=64, help="held-out prompts (a multiple of every batch)"
    )
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per prompt")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(DEFAULT_JSON))
    a = p.parse_args(argv)
    a.batches = [int(b) for b in a.batches.split(",") if b]
    if not a.batches or any(b < 1 or a.prompts % b for b in a.batches):
        p.error(f"--batches {a.batches}: each must be >= 1 and divide --prompts {a.prompts}")
    if a.new_tokens < 2:
        p.error(f"--new-tokens {a.new_tokens}: need >= 2 (the first token comes from the prefill)")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model_dir = Path(a.model_dir)
    w = load_weights(model_dir, dtype="float32")  # bf16 weights, fp32 arithmetic on the CPU
    cfg = w.cfg
    windows, data = ma.heldout_windows(model_dir, cfg.max_seq_len)
    _, prompts, _, prompt_idx = ma.split_windows(windows, a.prompts, 0, a.prompt_len, a.seed)
    eng = Engine(
        w,
        make_policy("overlap"),
        device="cpu",
        max_batch=max(a.batches),
        max_seq_len=a.prompt_len + a.new_tokens + 2,
    )
    by_batch, counters = {}, {}
    for b in a.batches:
        rows, counters[str(b)] = run_batches(eng, prompts, b, a.new_tokens)
        by_batch[str(b)] = summarize(rows, cfg, a.bootstrap, a.seed)
    wall = time.perf_counter() - t0
    primary = str(PRIMARY_BATCH if PRIMARY_BATCH in a.batches else min(a.batches))
    doc = {
        "schema": "specmoe.prefetch/1",
        "prefetch_hit_rate": by_batch[primary]["hit_rate"],
        "primary": {
            "batch": int(primary),
            "phase": "decode",
            "layers": f"1..{cfg.layers - 1}",
            "why": "batch 1 is the per-token prediction; a larger batch unions the predictions "
            "of more tokens, so its h is higher (by_batch)",
        },
        "by_batch": by_batch,
        "definitions": {
            "hit_rate": "Σ|prefetched ∩ needed| / Σ|needed| over decode steps and layers >= 1 "
            "(Policy.prefetch_hit_rate)",
            "precision": "Σ|prefetched ∩ needed| / Σ|prefetched| (share of prefetch bytes used)",
            "chance_hit_rate": (
                "hit rate of a random prediction of the same size: Σ|P|·|N|/E / Σ|N|"
            ),
            "prediction": "engine overlap policy: top-k of layer l's router applied to layer l-1's "
            "MoE input, per token, union over the batch",
            "ci95": "bootstrap over generate() calls",
        },
        "metadata": {
            "model": {
                "name": "tiny",
                "path": ma.rel(model_dir),
                "sha256": ma.sha256(model_dir / "model.safetensors"),
                "layers": cfg.layers,
                "experts": cfg.experts,
                "top_k": cfg.top_k,
                "engine_dtype": cfg.dtype,
            },
            "data": data
            | {
                "prompt_windows": prompt_idx,
                "prompts": a.prompts,
                "prompt_len": a.prompt_len,
                "new_tokens": a.new_tokens,
                "batches": a.batches,
                "temperature": 0.0,
            },
            "engine_counters": counters,
            "command": (
                "python experiments/measure_prefetch.py "
                + shlex.join(argv if argv is not None else sys.argv[1:])
            ).strip(),
            "device": {k: v for k, v in device_fingerprint("cpu").items() if k != "host"},
            "seed": a.seed,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_seconds": round(wall, 1),
        },
    }
    out = Path(a.out)
    ma.write_atomic(out, json.dumps(doc, indent=1) + "\n")
    print(table(by_batch, cfg.layers))
    print(
        f"prefetch_hit_rate (batch {primary}, decode, layers 1..{cfg.layers - 1}) = "
        f"{doc['prefetch_hit_rate']:.3f}; wall {wall:.0f}s; wrote {out}"
    )
    return doc


if __name__ == "__main__":
    main()
