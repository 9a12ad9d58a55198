"""The whole calibration loop on this CPU machine: the "GPU" is the CPU, the "link" a host memcpy.

    python experiments/calibrate_cpu.py peaks            # peaks for hwprofiles/*/cpu-local.yaml
    python experiments/calibrate_cpu.py traces           # microbenchmarks + end-to-end runs
    python experiments/calibrate_cpu.py fit              # calibrate, validate, write the report
    python experiments/calibrate_cpu.py all              # traces, then fit

Traces go to experiments/data/cpu/ (gzip): micro-*.jsonl.gz (engine microbenchmarks at the
engine's shapes) and e2e/{train,heldout}/ (end-to-end runs, experiments/engine_runs.py). `fit`
calibrates hwprofiles/calibrated/cpu-local.yaml on the microbenchmarks plus the training runs, then
validates on the held-out runs (other batches, γ and policies) and writes
experiments/reports/calibration_cpu.md (+ .html parity plots). Everything runs with one torch
thread: the machine has 2 cores shared with other work, and one thread halves the contention.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "experiments" / "data" / "cpu"
REPORT = REPO / "experiments" / "reports" / "calibration_cpu.md"
PROFILE = REPO / "hwprofiles" / "calibrated" / "cpu-local.yaml"
PY = sys.executable

# End-to-end grid at two expert sizes: (split, preset, policies, batches, gammas). Training runs
# feed the op fit (their op spans, measured in place) and layer_overhead_us (their iteration
# times); held-out runs are other batches, γ and policies. overlap is held out only: on this
# device copies cannot overlap compute (see the report). Each configuration runs REPEATS times,
# repeats outermost, and validation takes the median.
GRID = [("train", "cpu-small", "ondemand,caching", "1,3,6", "0"),
        ("train", "cpu-small", "specmoe", "1,3,6", "2"),
        ("train", "cpu-wide", "ondemand", "1,3,6", "0"),
        ("train", "cpu-wide", "specmoe", "3", "3"),
        ("heldout", "cpu-small", "ondemand,caching,overlap", "2,4,8", "0"),
        ("heldout", "cpu-small", "specmoe", "2,4,8", "2,4"),
        ("heldout", "cpu-wide", "ondemand,caching", "2,8", "0"),
        ("heldout", "cpu-wide", "specmoe", "2,8", "4")]
REPEATS = 3
RUN = dict(prompt_len=16, max_new_tokens=20, synthetic_acceptance=0.7, cache_fraction=0.25)
# Copies large enough (src + dst > 2 x the 32 MiB L3) to stream from DRAM as the engine's expert
# fetches do; smaller ones would be timed cache-hot (the microbenchmark reuses its buffers).
COPY_SIZES = [48 << 20, 96 << 20, 192 << 20]
COPY_CHUNKS = (None, 1 << 20, 1 << 16)


# ------------------------------------------------------------------------------------ peaks

def _best(fn, reps: int = 7) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_peaks(rounds: int = 3) -> dict:
    """Best of `rounds` over sizes, one thread: matmul FLOP/s per dtype, streaming read and copy
    bandwidth (256 MiB, far beyond the 32 MiB L3), and the time of a tiny copy (per-copy setup)."""
    import torch

    torch.set_num_threads(1)
    out = {"fp32_tflops": 0.0, "bf16_tflops": 0.0, "fp16_tflops": 0.0, "read_gbps": 0.0,
           "copy_gbps": 0.0, "copy_setup_us": float("inf")}
    big = torch.ones(64 * 2 ** 20)           # 256 MiB, touched so no page is the shared zero page
    dst = torch.ones_like(big)
    small_src, small_dst = torch.ones(16), torch.ones(16)
    for _ in range(rounds):
        for key, dt in (("fp32_tflops", torch.float32), ("bf16_tflops", torch.bfloat16),
                        ("fp16_tflops", torch.float16)):
            for n in (256, 512, 1024):
                a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
                out[key] = max(out[key], 2 * n ** 3 / _best(lambda: a @ b) / 1e12)
        out["read_gbps"] = max(out["read_gbps"], big.numel() * 4 / _best(big.sum) / 1e9)
        out["copy_gbps"] = max(out["copy_gbps"], big.numel() * 4 / _best(lambda: dst.copy_(big)) / 1e9)

        def many():
            for _ in range(1000):
                small_dst.copy_(small_src)

        out["copy_setup_us"] = min(out["copy_setup_us"], _best(many) / 1000 * 1e6)
    mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    out["ram_gb"] = int(mem.split()[1]) * 1024 / 1e9
    out["cpu"] = platform.processor() or platform.machine()
    out["torch"] = torch.__version__
    out["date"] = datetime.date.today().isoformat()
    return out


# ------------------------------------------------------------------------------------ traces

def microbench(path: Path, reps: int = 7, kinds: tuple[str, ...] = ("h2d",)) -> None:
    """The engine's microbenchmarks (engine/microbench.Bench) at the CPU loop's shapes, fp32.

    The default set is the DRAM-streaming copies only: Bench times an op by repeating it on the
    same buffers, so on a CPU its expert, GEMM and attention timings are cache-hot while the
    engine's are not; `kinds=all` measures those too (the report compares both calibrations)."""
    import torch
    from specmoe.engine.microbench import Bench

    torch.set_num_threads(1)
    b = Bench("cpu", torch.float32, reps)
    hidden, ffn = 512, 1024
    if "h2d" in kinds:
        b.copy(COPY_SIZES, "h2d", pinned=(False,), chunks=COPY_CHUNKS)
    if "gemm" in kinds:
        b.gemm([(n, ffn, hidden) for n in (1, 4, 16, 64)] + [(n, hidden, ffn) for n in (1, 4, 16, 64)])
    if "expert" in kinds:
        b.expert(hidden, ffn, [1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
        b.expert(hidden, 2 * ffn, [1, 2, 4, 8, 16, 32])
    if "attn" in kinds:
        b.attention(8, 4, 64, [1, 2, 4, 8], [16, 32, 64], queries=1)
        b.attention(8, 4, 64, [1, 4], [24, 48], queries=3)
    if "cpu_expert" in kinds:
        b.cpu_expert(hidden, ffn, [1, 2, 4, 8, 16, 32])
    b.write(path, {"command": "python experiments/calibrate_cpu.py traces", "kinds": list(kinds)})


def engine_runs() -> None:
    """Every configuration of GRID, REPEATS times, repeats outermost (see experiments/engine_runs.py)."""
    import torch
    import engine_runs as er
    from specmoe.engine.weights import random_model

    torch.set_num_threads(1)
    plan = [(split, preset, run) for split, preset, pol, b, g in GRID
            for run in er.grid(pol, b, g, "2")]
    weights = {}
    for preset in sorted({p for _, p, _ in plan}):
        cfg = er.model_config(preset, None, max(r["batch"] for _, p, r in plan if p == preset),
                              er.seq_len_needed(RUN["prompt_len"], RUN["max_new_tokens"], 4))
        weights[preset] = random_model(cfg, seed=0)
    for rep in range(REPEATS):
        for split, preset, run in plan:
            path = DATA / "e2e" / split / er.file_name(preset, run, rep)
            if not path.exists():
                tps = er.run_one(weights[preset], run, path, seed=rep, **RUN)
                print(f"{split}/{path.name}: {tps:.1f} tokens/s", flush=True)


def cmd_traces(args) -> None:
    sys.path.insert(0, str(REPO / "experiments"))
    DATA.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    microbench(DATA / "micro-copy-1.jsonl.gz")
    engine_runs()
    microbench(DATA / "micro-copy-2.jsonl.gz")
    microbench(DATA / "micro-all.jsonl.gz", kinds=("h2d", "gemm", "expert", "attn", "cpu_expert"))
    print(f"traces written under {DATA} in {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------------------------ fit

def train_traces() -> list[Path]:
    return sorted(DATA.glob("micro-copy-*.jsonl.gz")) + sorted((DATA / "e2e" / "train").glob("*.jsonl.gz"))


def heldout_traces() -> list[Path]:
    return sorted((DATA / "e2e" / "heldout").glob("*.jsonl.gz"))


def cmd_fit(args) -> None:
    from specmoe.calibrate import calibrate, markdown_tables, write_html
    from specmoe.hardware import save_system
    from specmoe.validate import markdown_table, validate

    t0 = time.perf_counter()
    train = train_traces()
    rel = [str(p.relative_to(REPO)) for p in train]
    command = f"specmoe calibrate {' '.join(rel)} --hardware cpu-local -o {PROFILE.relative_to(REPO)}"
    calib = calibrate(train, "cpu-local", name="cpu-local", command=command)
    fit_s = time.perf_counter() - t0
    save_system(calib.system, PROFILE)
    html = REPORT.with_suffix(".html")
    write_html(calib, html)
    held = validate(heldout_traces(), PROFILE)
    train_val = validate(sorted((DATA / "e2e" / "train").glob("*.jsonl.gz")), PROFILE)
    dev = calib.system.calibration["device"]
    text = f"""# Calibration on this CPU machine (cpu-local)

Device: {dev.get('name')} ({dev.get('cpu_count')} cores, torch {dev.get('torch')}, {dev.get('threads')} torch thread), shared with
other work; measured {calib.system.calibration['date']}. The "GPU" is this CPU, the "link" a host
memory copy (hwprofiles/gpus/cpu-local.yaml, hosts/cpu-local.yaml, links/host-memcpy.yaml: peaks
measured by `python experiments/calibrate_cpu.py peaks`). Model: the engine at cpu-small shapes
(experiments/engine_runs.py: hidden 512, 8 experts of ffn 1024, top-2, 4 layers, fp32, random
weights), prompt 16, 16 new tokens, synthetic acceptance α = 0.7, caching pins 25%.

Reproduce: `python experiments/calibrate_cpu.py traces` (measures, ~10 min) then
`python experiments/calibrate_cpu.py fit` (fit {fit_s:.0f} s, validation, this report), or by hand:

    {command}
    specmoe validate experiments/data/cpu/e2e/heldout/*.jsonl.gz --hardware cpu-local

## Per-op hold-out error ({calib.ops.folds}-fold by distinct configuration; `iteration` = end-to-end training runs)

{markdown_tables(calib)}

Parity plots: [calibration_cpu.html](calibration_cpu.html).

## End-to-end tokens/s, held-out runs (predictor: {held['rows'][0]['predictor']})

{markdown_table(held)}

## End-to-end tokens/s, training runs (these fitted layer_overhead_us only)

{markdown_table(train_val)}
"""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    print(text)
    print(json.dumps({"heldout": held["summary"], "fit_seconds": round(fit_s, 1)}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("peaks").set_defaults(func=lambda a: print(json.dumps(measure_peaks(), indent=2)))
    sub.add_parser("traces").set_defaults(func=cmd_traces)
    sub.add_parser("fit").set_defaults(func=cmd_fit)
    sub.add_parser("all").set_defaults(func=lambda a: (cmd_traces(a), cmd_fit(a)))
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
