"""End-to-end engine runs for validation: one traced run per (policy, batch, γ, N), CPU or CUDA.

Needs only torch, numpy and this repository (the GPU campaign runs it where pydantic, yaml, rich
and simpy are absent). Each trace's header carries what validation needs beside the engine's own
header: the run's measured routing (per-layer inclusion probabilities over the decode/verify
forwards: the workload's routing, an input of the models like the acceptance rate) and the
engine's GenerationStats.

    python experiments/engine_runs.py --out DIR --preset cpu-small --policies ondemand,specmoe \
        --batches 1,4 --gammas 2,4 --draft-experts 2 --synthetic-acceptance 0.7
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

# The shapes the CPU loop runs at (small enough for 2 shared cores, large enough that expert
# weights, 6 and 12.6 MB each, leave the L2 cache; two expert sizes so that copy bandwidth and
# per-copy time separate), and Mixtral-8x7B's (mistralai/Mixtral-8x7B-v0.1 config.json) with a
# subset of its 32 layers for GPU campaigns.
PRESETS = {
    "cpu-small": dict(hidden=512, heads=8, kv_heads=4, head_dim=64, experts=8, top_k=2,
                      expert_ffn=1024, vocab=512, dtype="float32", layers=4),
    "cpu-wide": dict(hidden=512, heads=8, kv_heads=4, head_dim=64, experts=8, top_k=2,
                     expert_ffn=2048, vocab=512, dtype="float32", layers=4),
    "mixtral-8x7b": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, experts=8, top_k=2,
                         expert_ffn=14336, vocab=32000, dtype="bfloat16", layers=4,
                         rope_theta=1e6),
}
SPECULATIVE = ("specmoe", "eagle")


def routing_stats(record: list[dict], experts: int, top_k: int) -> dict:
    """Per-layer inclusion probabilities p[l][e] (Σ_e = top_k) over decode/verify forwards, and the
    mean distinct experts per layer-step those forwards touched."""
    layers = 1 + max(r["layer"] for r in record)
    counts = [[0] * experts for _ in range(layers)]
    tokens = [0] * layers
    distinct, steps = 0, 0
    for r in record:
        if r["phase"] not in ("decode", "verify"):
            continue
        ids = r["ids"]
        for row in ids:
            for e in row:
                counts[r["layer"]][e] += 1
        tokens[r["layer"]] += len(ids)
        distinct += len({e for row in ids for e in row})
        steps += 1
    if not steps:
        return {}
    probs = [[c / max(t, 1) for c in row] for row, t in zip(counts, tokens)]
    return {"inclusion_probs": probs, "phases": ["decode", "verify"],
            "distinct_per_layer_step": distinct / steps, "layer_steps": steps}


def run_grid(args) -> list[Path]:
    from specmoe.engine.config import MoEConfig
    from specmoe.engine.generate import Engine
    from specmoe.engine.tracer import Tracer
    from specmoe.engine.weights import random_model
    from specmoe.policies import make_policy

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = MoEConfig(**{**PRESETS[args.preset], **({"layers": args.layers} if args.layers else {}),
                       "max_batch": max(_ints(args.batches)),
                       # a sequence that finished by overshooting (up to γ extra tokens) is still
                       # recomputed at L..L+γ while others run: prompt + max_new + 2γ positions
                       "max_seq_len": args.prompt_len + args.max_new_tokens + 2 * max(_ints(args.gammas)) + 2})
    w = random_model(cfg, seed=args.seed, pin=args.device.startswith("cuda"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    written = []
    for name, batch, rep in itertools.product(args.policies.split(","), _ints(args.batches),
                                              range(args.repeats)):
        gammas = _ints(args.gammas) if name in SPECULATIVE else [0]
        ns = _ints(args.draft_experts) if name == "specmoe" else [0]
        for gamma, n in itertools.product(gammas, ns):
            path = out / f"{args.preset}-{name}-b{batch}-g{gamma}-n{n}-r{rep}.jsonl.gz"
            if path.exists():
                continue
            kw = {"cache_fraction": args.cache_fraction} if name in ("caching", "cpu") else {}
            policy = make_policy(name, gamma=gamma, draft_experts=n, **kw)
            eng = Engine(w, policy, args.device, max_batch=batch, max_seq_len=cfg.max_seq_len)
            prompts = torch.randint(0, cfg.vocab, (batch, args.prompt_len), generator=g).tolist()
            alpha = args.synthetic_acceptance if gamma else None
            for _ in range(args.warmup):
                eng.generate(prompts, args.max_new_tokens, synthetic_acceptance=alpha)
            eng.tracer = Tracer(args.device)
            res = eng.generate(prompts, args.max_new_tokens, synthetic_acceptance=alpha,
                               seed=args.seed + rep, record_routing=True)
            eng.tracer.header["result"] = res.stats.to_dict()
            eng.tracer.header["routing"] = routing_stats(res.routing, cfg.experts, cfg.top_k)
            eng.tracer.header["command"] = "python " + " ".join(sys.argv)
            eng.tracer.write(path)
            written.append(path)
            print(f"{path.name}: {res.stats.tokens_per_s:.1f} tokens/s", flush=True)
            del eng
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return written


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--policies", default="ondemand,caching,specmoe")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--gammas", default="4")
    p.add_argument("--draft-experts", default="2")
    p.add_argument("--cache-fraction", type=float, default=0.25)
    p.add_argument("--synthetic-acceptance", type=float, default=0.7)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    t0 = time.perf_counter()
    paths = run_grid(parser().parse_args())
    print(json.dumps({"written": len(paths), "seconds": round(time.perf_counter() - t0, 1)}))
