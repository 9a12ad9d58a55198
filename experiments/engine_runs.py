"""End-to-end engine runs for validation: traced runs per (policy, batch, γ, N), on CPU or CUDA.

Needs only torch, numpy and this repository (the GPU campaign runs it where pydantic, yaml, rich
and simpy are absent). Each trace's header carries what validation needs beside the engine's own
header: the run's measured routing (per-layer inclusion probabilities over the decode/verify
forwards: the workload's routing, an input of the models like the acceptance rate) and the
engine's GenerationStats. Repeats are the outer loop, so the repeats of one configuration are
spread over the whole measurement and a burst of load on a shared machine hits one repeat, not
all of them (validation takes the median over repeats).

    python experiments/engine_runs.py --out DIR --preset cpu-small --policies ondemand,specmoe \
        --batches 1,4 --gammas 2,4 --draft-experts 2 --synthetic-acceptance 0.7 --repeats 3
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
    "cpu-small": {"hidden": 512, "heads": 8, "kv_heads": 4, "head_dim": 64, "experts": 8,
                  "top_k": 2, "expert_ffn": 1024, "vocab": 512, "dtype": "float32", "layers": 4},
    "cpu-wide": {"hidden": 512, "heads": 8, "kv_heads": 4, "head_dim": 64, "experts": 8,
                 "top_k": 2, "expert_ffn": 2048, "vocab": 512, "dtype": "float32", "layers": 4},
    "mixtral-8x7b": {"hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128, "experts": 8,
                     "top_k": 2, "expert_ffn": 14336, "vocab": 32000, "dtype": "bfloat16",
                     "layers": 4, "rope_theta": 1e6},
}
SPECULATIVE = ("specmoe", "eagle")


def routing_stats(record: list[dict], experts: int) -> dict:
    """Per-layer inclusion probabilities p[l][e] (Σ_e = top_k) over decode/verify forwards, and the
    mean distinct experts per layer-step those forwards touched."""
    layers = 1 + max(r["layer"] for r in record)
    counts = [[0] * experts for _ in range(layers)]
    tokens = [0] * layers
    distinct, steps = 0, 0
    for r in record:
        if r["phase"] not in ("decode", "verify"):
            continue
        for row in r["ids"]:
            for e in row:
                counts[r["layer"]][e] += 1
        tokens[r["layer"]] += len(r["ids"])
        distinct += len({e for row in r["ids"] for e in row})
        steps += 1
    if not steps:
        return {}
    probs = [[c / max(t, 1) for c in row] for row, t in zip(counts, tokens)]
    return {"inclusion_probs": probs, "phases": ["decode", "verify"],
            "distinct_per_layer_step": distinct / steps, "layer_steps": steps}


def model_config(preset: str, layers: int | None, max_batch: int, max_seq_len: int):
    from specmoe.engine.config import MoEConfig

    over = {"layers": layers} if layers else {}
    return MoEConfig(
        **{**PRESETS[preset], **over, "max_batch": max_batch, "max_seq_len": max_seq_len}
    )


def seq_len_needed(prompt_len: int, max_new: int, gamma: int) -> int:
    # a sequence that finished by overshooting (up to γ extra tokens) is still recomputed at
    # L..L+γ while others run: prompt + max_new + 2γ positions
    return prompt_len + max_new + 2 * gamma + 2


def run_one(
    w,
    run: dict,
    path: Path,
    *,
    device: str = "cpu",
    prompt_len: int = 16,
    max_new_tokens: int = 16,
    synthetic_acceptance: float = 0.7,
    resident_experts: int | None = 2,
    warmup_tokens: int = 4,
    seed: int = 0,
    max_interference: float = 1.15,
    max_tries: int = 4,
    affinity: list | None = None,
) -> float:
    """One traced generate() of `run` = {policy, batch, gamma, draft_experts}; returns tokens/s.

    On a CPU shared with other work, a run whose wall time exceeds its own CPU time by more than
    `max_interference` (it waited for the core) is measured again, up to `max_tries` times, and
    the least disturbed attempt is kept; the header records its ratio. affinity: the weights'
    expert ranking (affinity.affinity_ranking), computed once per run set and passed in."""
    from specmoe.engine.generate import Engine
    from specmoe.engine.tracer import Tracer

    from specmoe.inputs.policies import make_policy

    name, batch, gamma = run["policy"], run["batch"], run["gamma"]
    kw = {"resident_experts": resident_experts} if name in ("caching", "cpu") else {}
    policy = make_policy(name, gamma=gamma, draft_experts=run["draft_experts"], **kw)
    eng = Engine(w, policy, device, max_batch=batch,
                 max_seq_len=seq_len_needed(prompt_len, max_new_tokens, gamma),
                 affinity=affinity if name == "specmoe" else None)
    g = torch.Generator().manual_seed(seed + batch)
    prompts = torch.randint(0, w.cfg.vocab, (batch, prompt_len), generator=g).tolist()
    alpha = synthetic_acceptance if gamma else None
    if warmup_tokens:  # first calls allocate and initialise; keep them out of the trace
        eng.generate(prompts, warmup_tokens, synthetic_acceptance=alpha)
    best = None
    for attempt in range(1, (max_tries if device == "cpu" else 1) + 1):
        tracer = Tracer(device)
        eng.tracer = tracer
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = eng.generate(prompts, max_new_tokens, synthetic_acceptance=alpha, seed=seed,
                           record_routing=True)
        ratio = (time.perf_counter() - wall0) / max(time.process_time() - cpu0, 1e-9)
        if best is None or ratio < best[0]:
            best = (ratio, attempt, tracer, res)
        if device != "cpu" or ratio <= max_interference:
            break
    interference, attempt, tracer, res = best
    tracer.header["result"] = res.stats.to_dict()
    # On a CPU the run's wall time over its CPU time says how much other work took the core.
    tracer.header["interference"] = {"wall_over_cpu": round(interference, 4), "attempt": attempt,
                                  "max_wall_over_cpu": max_interference}
    tracer.header["routing"] = routing_stats(res.routing, w.cfg.experts)
    tracer.header["command"] = "python " + " ".join(sys.argv)
    tracer.write(path)
    del eng
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return res.stats.tokens_per_s


def grid(policies: str, batches: str, gammas: str, draft_experts: str) -> list[dict]:
    runs = []
    for name, batch in itertools.product(policies.split(","), _ints(batches)):
        gs = _ints(gammas) if name in SPECULATIVE else [0]
        ns = _ints(draft_experts) if name == "specmoe" else [0]
        for gamma, n in itertools.product(gs, ns):
            runs.append({"policy": name, "batch": batch, "gamma": gamma, "draft_experts": n})
    return runs


def file_name(preset: str, run: dict, rep: int) -> str:
    return (f"{preset}-{run['policy']}-b{run['batch']}-g{run['gamma']}-n{run['draft_experts']}"
            f"-r{rep}.jsonl.gz")


def plan(args) -> list[tuple[str, dict]]:
    """(subdirectory, run) pairs: every --grid row, or the single grid of the plain flags."""
    rows = args.grid or [f".:{args.policies}:{args.batches}:{args.gammas}"]
    out = []
    for row in rows:
        try:
            split, policies, batches, gammas = row.split(":")
        except ValueError:
            raise SystemExit(f"--grid {row!r}: expected SPLIT:POLICIES:BATCHES:GAMMAS") from None
        out += [(split, run) for run in grid(policies, batches, gammas, args.draft_experts)]
    return out


def main(args) -> list[Path]:
    """Every run of the plan, `repeats` times, repeats outermost; existing traces are kept
    (an interrupted campaign resumes)."""
    from specmoe.engine.affinity import affinity_ranking
    from specmoe.engine.weights import random_model

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = plan(args)
    cfg = model_config(
        args.preset,
        args.layers,
        max(r["batch"] for _, r in runs),
        seq_len_needed(args.prompt_len, args.max_new_tokens, max(r["gamma"] for _, r in runs)),
    )
    cuda = args.device.startswith("cuda")
    t0 = time.perf_counter()
    # On a GPU the weights are drawn there and copied into the pinned host arena (seconds, where
    # a CPU draw of Mixtral's 4 layers takes half a minute)
    w = random_model(cfg, seed=args.seed, pin=cuda, init_device=args.device if cuda else None)
    affinity = None
    if any(r["policy"] == "specmoe" for _, r in runs):  # once for the whole run set
        affinity = affinity_ranking(w.experts, args.device)
    print(f"weights and affinity: {time.perf_counter() - t0:.1f} s", flush=True)
    written = []
    for rep in range(args.repeats):
        for split, run in runs:
            path = Path(args.out) / split / file_name(args.preset, run, rep)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tps = run_one(w, run, path, device=args.device, prompt_len=args.prompt_len,
                          max_new_tokens=args.max_new_tokens, seed=args.seed + rep,
                          synthetic_acceptance=args.synthetic_acceptance,
                          resident_experts=args.resident_experts, affinity=affinity)
            written.append(path)
            print(f"{split}/{path.name}: {tps:.1f} tokens/s", flush=True)
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
    p.add_argument("--grid", action="append", default=[], metavar="SPLIT:POLICIES:BATCHES:GAMMAS",
                   help="a grid row written under OUT/SPLIT (repeatable; replaces the three above)")
    p.add_argument("--draft-experts", default="2")
    p.add_argument("--resident-experts", type=int, default=2,
                   help="caching/cpu: hottest experts pinned per layer (2 of Mixtral's 8)")
    p.add_argument("--synthetic-acceptance", type=float, default=0.7)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    t0 = time.perf_counter()
    paths = main(parser().parse_args())
    print(json.dumps({"written": len(paths), "seconds": round(time.perf_counter() - t0, 1)}))
