"""The whole calibration loop on this CPU machine: the "GPU" is the CPU, the "link" a host memcpy.

    python experiments/calibrate_cpu.py peaks            # peaks for hwprofiles/*/cpu-local.yaml
    python experiments/calibrate_cpu.py traces           # microbenchmarks + end-to-end runs
    python experiments/calibrate_cpu.py fit              # calibrate, validate, write the report
    python experiments/calibrate_cpu.py all              # traces, then fit

Traces go to experiments/data/cpu/ (gzip): micro-*.jsonl.gz (engine microbenchmarks) and
e2e/{train,heldout}/ (end-to-end runs, experiments/engine_runs.py). `fit` calibrates
hwprofiles/calibrated/cpu-local-calibrated.yaml (base: the cpu-local profile) on the copy
microbenchmarks plus the training runs, validates on the held-out runs (other batches, γ and
policies) and writes experiments/reports/calibration_cpu.md (+ .html parity plots). Everything
runs with one torch thread: the machine has 2 cores shared with other work.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "experiments" / "data" / "cpu"
REPORT = REPO / "experiments" / "reports" / "calibration_cpu.md"
PROFILE = REPO / "hwprofiles" / "calibrated" / "cpu-local-calibrated.yaml"
PY = sys.executable

# End-to-end grid at two expert sizes: (split, preset, policies, batches, gammas). Training runs
# feed the op fit (their op spans, measured in place) and layer_overhead_us (their iteration
# times); held-out runs are other batches, γ and policies. overlap is held out only: on this
# device copies cannot overlap compute (see the report). Each configuration runs REPEATS times,
# repeats outermost, and validation takes the median.
GRID = [
    ("train", "cpu-small", "ondemand,caching", "1,3,6", "0"),
    ("train", "cpu-small", "specmoe", "1,3,6", "2"),
    ("train", "cpu-wide", "ondemand", "1,3,6", "0"),
    ("train", "cpu-wide", "specmoe", "3", "3"),
    ("heldout", "cpu-small", "ondemand,caching,overlap", "2,4,8", "0"),
    ("heldout", "cpu-small", "specmoe", "2,4,8", "2,4"),
    ("heldout", "cpu-wide", "ondemand,caching", "2,8", "0"),
    ("heldout", "cpu-wide", "specmoe", "2,8", "4"),
]
REPEATS = 3
RUN = {"prompt_len": 16, "max_new_tokens": 20, "synthetic_acceptance": 0.7, "resident_experts": 2}
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
    out = {
        "fp32_tflops": 0.0,
        "bf16_tflops": 0.0,
        "fp16_tflops": 0.0,
        "read_gbps": 0.0,
        "copy_gbps": 0.0,
        "copy_setup_us": float("inf"),
    }
    big = torch.ones(64 * 2**20)  # 256 MiB, touched so no page is the shared zero page
    dst = torch.ones_like(big)
    small_src, small_dst = torch.ones(16), torch.ones(16)
    for _ in range(rounds):
        for key, dt in (
            ("fp32_tflops", torch.float32),
            ("bf16_tflops", torch.bfloat16),
            ("fp16_tflops", torch.float16),
        ):
            for n in (256, 512, 1024):
                a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
                out[key] = max(out[key], 2 * n**3 / _best(lambda a=a, b=b: a @ b) / 1e12)
        out["read_gbps"] = max(out["read_gbps"], big.numel() * 4 / _best(big.sum) / 1e9)
        out["copy_gbps"] = max(
            out["copy_gbps"], big.numel() * 4 / _best(lambda: dst.copy_(big)) / 1e9
        )

        def many():
            for _ in range(1000):
                small_dst.copy_(small_src)

        out["copy_setup_us"] = min(out["copy_setup_us"], _best(many) / 1000 * 1e6)
    mem = next(
        l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")
    )
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
        b.gemm(
            [(n, ffn, hidden) for n in (1, 4, 16, 64)] + [(n, hidden, ffn) for n in (1, 4, 16, 64)]
        )
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
    """Every configuration of GRID, REPEATS times, repeats outermost (see
    experiments/engine_runs.py)."""
    import engine_runs as er
    import torch
    from specmoe.engine.weights import random_model

    torch.set_num_threads(1)
    plan = [
        (split, preset, run) for split, preset, pol, b, g in GRID for run in er.grid(pol, b, g, "2")
    ]
    weights = {}
    for preset in sorted({p for _, p, _ in plan}):
        cfg = er.model_config(
            preset,
            None,
            max(r["batch"] for _, p, r in plan if p == preset),
            er.seq_len_needed(RUN["prompt_len"], RUN["max_new_tokens"], 4),
        )
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

FIT = {"min_samples": 3}  # an op configuration needs 3 timings for a median
CLI = (
    "specmoe calibrate experiments/data/cpu/micro-copy-*.jsonl.gz "
    "experiments/data/cpu/e2e/train/*.jsonl.gz --hardware cpu-local "
    "-o hwprofiles/calibrated/cpu-local-calibrated.yaml --min-samples 3"
)


def rel(paths) -> list[str]:
    return [str(Path(p).resolve().relative_to(REPO)) for p in paths]


def e2e_traces(split: str) -> list[str]:
    return rel(sorted((DATA / "e2e" / split).glob("*.jsonl.gz")))


def train_traces() -> list[str]:
    return rel(sorted(DATA.glob("micro-copy-*.jsonl.gz"))) + e2e_traces("train")


def heldout_traces() -> list[str]:
    return e2e_traces("heldout")


def calibrate_cpu(traces=None, **over):
    """The CPU profile's fit (what `fit` writes to
    hwprofiles/calibrated/cpu-local-calibrated.yaml)."""
    from specmoe.fit.calibrate import calibrate
    from specmoe.fit.solver import FitOptions

    return calibrate(
        traces or train_traces(),
        "cpu-local",
        name="cpu-local-calibrated",
        opts=FitOptions(**{**FIT, **over}),
        command=CLI if traces is None else None,
    )


def noise(paths) -> dict:
    """How disturbed the measurements were: repeat spread per configuration, wall/CPU time."""
    import statistics

    from specmoe.measure.ingest import group_runs, read_run
    from specmoe.measure.trace import read_trace

    runs = [read_run(p) for p in paths]
    spreads = [
        (max(r.tokens_per_s for r in g) - min(r.tokens_per_s for r in g))
        / statistics.median(r.tokens_per_s for r in g)
        for g in group_runs(runs)
        if len(g) > 1
    ]
    ratios = [read_trace(p).header.get("interference", {}).get("wall_over_cpu") for p in paths]
    ratios = [r for r in ratios if r]
    return {
        "median_repeat_spread_pct": 100 * statistics.median(spreads),
        "max_repeat_spread_pct": 100 * max(spreads),
        "median_wall_over_cpu": statistics.median(ratios) if ratios else None,
        "runs_over_1_15": sum(r > 1.15 for r in ratios),
        "runs": len(paths),
    }


def _signed_by_batch(rows) -> str:
    import statistics

    groups: dict[int, list[float]] = {}
    for r in rows:
        if r["policy"] != "overlap":
            groups.setdefault(r["batch"], []).append(r["error_pct"])
    return ", ".join(f"B={b}: {statistics.mean(e):+.1f}%" for b, e in sorted(groups.items()))


def cmd_fit(args) -> None:
    from specmoe.fit.calibrate import markdown_tables, write_html
    from specmoe.fit.validate import markdown_table, summarize, validate
    from specmoe.inputs.hardware import save_system

    t0 = time.perf_counter()
    calib = calibrate_cpu()
    fit_s = time.perf_counter() - t0
    save_system(calib.system, PROFILE)
    write_html(calib, REPORT.with_suffix(".html"))
    held = validate(heldout_traces(), PROFILE)
    train = validate(e2e_traces("train"), PROFILE)
    # The same loop with op parameters from the engine's microbenchmarks alone (cache-hot on a CPU)
    micro = calibrate_cpu(
        rel([DATA / "micro-all.jsonl.gz"]) + e2e_traces("train"), op_traces="microbenchmark"
    )
    held_micro = validate(heldout_traces(), micro.system, predictor="analytic")
    nz = noise(heldout_traces() + e2e_traces("train"))
    dev = calib.system.calibration["device"]
    s_all, s_no = held["summary"]["calibrated"], summarize(held["rows"], ["overlap"])["calibrated"]
    by_batch = _signed_by_batch(held["rows"])
    text = f"""# Calibration on this CPU machine (cpu-local)

Measured {calib.system.calibration["date"]} on {dev.get("name")} ({dev.get("cpu_count")} vCPUs,
KVM guest), torch {dev.get("torch")}, {dev.get("threads")} torch thread. The "GPU" is this CPU and \
the
"link" a host memory copy: hwprofiles/gpus/cpu-local.yaml, hosts/cpu-local.yaml and
links/host-memcpy.yaml hold peaks measured by `python experiments/calibrate_cpu.py peaks`.
The engine runs at two shapes (experiments/engine_runs.py presets cpu-small: hidden 512, 8
experts of ffn 1024, and cpu-wide: ffn 2048; top-2, 4 layers, fp32, random weights), prompt 16,
20 new tokens, synthetic acceptance α = 0.7, caching pins 25% of each layer's experts, N = 2
draft experts. Each configuration ran {REPEATS} times (repeats outermost); the tables compare
the median.

**This machine is shared** (2 vCPUs, other work running throughout): a run whose wall time exceeded
its CPU time by more than 15% was measured again (up to 4 attempts, the least disturbed kept).
Across the end-to-end runs: median wall/CPU {nz["median_wall_over_cpu"]:.2f},
{nz["runs_over_1_15"]} of {nz["runs"]} runs still above 1.15 after 4 attempts; repeats of one
configuration differ by {nz["median_repeat_spread_pct"]:.0f}% (median, max
{nz["max_repeat_spread_pct"]:.0f}%) of their median tokens/s. No prediction can be checked more
finely than that here: the 5% targets of DESIGN.md §11 are for an uncontended GPU.

Reproduce: `python experiments/calibrate_cpu.py traces` (measures; ~15 min here), then
`python experiments/calibrate_cpu.py fit` (this report; the fit takes {fit_s:.0f} s), or by hand:

    {CLI} --html experiments/reports/calibration_cpu.html
    specmoe validate experiments/data/cpu/e2e/heldout/*.jsonl.gz --hardware cpu-local-calibrated

## Per-op hold-out error

{calib.ops.folds}-fold hold-out by distinct op configuration (every configuration of an op is left
out once and predicted by the fit of the others). Op points: the engine's expert, attention-block,
gate and H2D spans measured in place in the training runs, plus DRAM-streaming copy
microbenchmarks (48-192 MiB, chunked and not). `iteration` is the end-to-end stage (training runs'
iteration times fitting layer_overhead_us, hold-out by configuration). The last column is the
measurement's own noise (IQR/median of a configuration's repeats).

{markdown_tables(calib)}

Parity plots: [calibration_cpu.html](calibration_cpu.html).

## End-to-end tokens/s, held-out configurations

Other batches, γ and policies than the training runs (predictor: {held["rows"][0]["predictor"]};
"analytic error" is the analytic model on the same configuration).

{markdown_table(held, {"without overlap": summarize(held["rows"], ["overlap"])})}

Summary: median |error| {s_all["median_abs_error_pct"]:.1f}% and max \
{s_all["max_abs_error_pct"]:.1f}% over
all {s_all["configurations"]} held-out configurations; {s_no["median_abs_error_pct"]:.1f}% and
{s_no["max_abs_error_pct"]:.1f}% without overlap. overlap is mispredicted by construction on this \
device:
the models let a prefetch run on the copy engine beside compute, but here the copy is a memcpy on
the one computing thread, so nothing overlaps (and mispredicted prefetches cost copies too).

What the errors say: the signed error (predicted minus measured, overlap left out) by batch:
mean {by_batch}.
A larger batch touches more distinct experts per layer, and on this device each expert is its own
set of kernels with its own fixed cost (the engine's CPU path loops over experts). The per-expert
fixed time `expert_overhead_us` of specmoe.costs.ops, fitted on the end-to-end training runs (where
the count of distinct experts varies with the batch), carries that cost; before it existed the
fitted per-layer overhead averaged it over the batches and the held-out median error was 13.5%
(10.5% without overlap). What is left is within the repeat spread of this shared machine.

## End-to-end tokens/s, training configurations

These runs fitted layer_overhead_us (and their op spans the op parameters).

{markdown_table(train)}

## The same loop with op parameters from the microbenchmarks alone

Op parameters fitted to the engine's microbenchmarks only (experiments/data/cpu/micro-all.jsonl.gz:
GEMM, expert FFN, scores-only attention, copies, CPU expert; `--op-traces microbenchmark`), the
training runs giving layer_overhead_us as before. The microbenchmark repeats an op on the same
buffers, so on a CPU its expert and GEMM weights stay in cache while the engine streams a freshly
copied expert: the op fit looks good and the end-to-end prediction does not.

{markdown_tables(micro)}

{markdown_table(held_micro)}

## Cross-device error

Needs a second device: calibrate on one GPU (experiments/gpu_campaign.sh on it), measure the
other with the same script, then predict the second from its datasheet profile with the first's
efficiencies and compare:

    specmoe calibrate --transfer-from A-campaign.yaml --hardware B_DATASHEET -o B-from-A.yaml
    specmoe validate B_OUT/traces/e2e/heldout/*.jsonl.gz --hardware B-from-A.yaml

Not measured yet (no GPU here).

## Commands and data

- traces: experiments/data/cpu/ (gzip JSONL, specmoe.trace/1): micro-copy-1/2 (copies),
  micro-all (every microbenchmark kind), e2e/train and e2e/heldout (one trace per run and repeat,
  header with the run's routing and wall/CPU ratio).
- profile: hwprofiles/calibrated/cpu-local-calibrated.yaml (efficiencies + `calibration:` \
provenance).
- tests: tests/test_calibrate_cpu.py refits these traces and checks the numbers above stay within
  bounds derived from this noise, and runs one live engine run against the profile.
"""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    print(text)
    print(
        json.dumps(
            {
                "heldout": held["summary"],
                "without_overlap": s_no,
                "noise": nz,
                "fit_seconds": round(fit_s, 1),
            },
            indent=2,
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("peaks").set_defaults(
        func=lambda a: print(json.dumps(measure_peaks(), indent=2))
    )
    sub.add_parser("traces").set_defaults(func=cmd_traces)
    sub.add_parser("fit").set_defaults(func=cmd_fit)
    sub.add_parser("all").set_defaults(func=lambda a: (cmd_traces(a), cmd_fit(a)))
    args = p.parse_args()
    import os

    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "experiments"))
    args.func(args)


if __name__ == "__main__":
    main()
