"""The planner's γ against the engine's measured best γ on this CPU (DESIGN.md §11, planning bar).

    # engine γ sweep -> experiments/data/cpu/gamma_sweep/
    python experiments/planner_vs_measured.py measure
    # more repeats of one cell -> gamma_sweep/focus/
    python experiments/planner_vs_measured.py focus
    # plan, compare -> experiments/reports/planner_vs_measured_cpu.md
    python experiments/planner_vs_measured.py report

measure: the engine (experiments/engine_runs.py, preset cpu-small, policy specmoe, N = 2 draft
experts, prompt 16, 20 new tokens, one torch thread) over γ ∈ GAMMAS at batches BATCHES, with
synthetic acceptance α ∈ ALPHAS for γ > 0 (γ = 0 does not draft, so one γ = 0 run per batch serves
both α). Repeats are the outer loop and each repeat runs its configurations in its own shuffled
order, so load on the shared machine drifting over the measurement hits every γ alike; a run
disturbed by other work (wall time over CPU time > 1.15) is measured again (engine_runs.run_one).
Existing traces are kept, so an interrupted sweep resumes; no new run starts after --budget-s.
focus: the same for FOCUS_CELL (the cell that missed the bar in the sweep), as a separate set.

report: per (α, batch), the measured curve (median over repeats of the decode time, as
specmoe.fit.validate compares), the planner's choice (specmoe.planning.search.plan restricted to
specmoe, N = 2, on the calibrated CPU profile; model shape, prompt and output lengths from the
trace header via specmoe.fit.validate.read_run; routing measured in the γ = 0 runs; acceptance α)
and specmoe.planning.search.compare_with_measured.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "experiments" / "data" / "cpu" / "gamma_sweep"
REPORT = REPO / "experiments" / "reports" / "planner_vs_measured_cpu.md"
PROFILE = REPO / "hwprofiles" / "calibrated" / "cpu-local-calibrated.yaml"

FOCUS = DATA / "focus"  # follow-up: more repeats of one (α, batch) cell, a separate set
FOCUS_CELL = {"alphas": (0.7,), "batches": (8,), "gammas": (0, 1, 2, 3)}
FOCUS_REPEATS = 12

PRESET = "cpu-small"
GAMMAS = (0, 1, 2, 3, 4, 6, 8)
BATCHES = (4, 8)
ALPHAS = (0.7, 0.4)
DRAFT_EXPERTS = 2
REPEATS = 6
RUN = {"prompt_len": 16, "max_new_tokens": 20, "resident_experts": 2}
TARGET = 0.97


# ------------------------------------------------------------------------------------ measure


def subdir(alpha: float | None) -> str:
    """γ = 0 runs under plain/, speculative runs under alpha<α>/ (the file name has no α)."""
    return "plain" if alpha is None else f"alpha{alpha:g}"


def sweep(batches=BATCHES, gammas=GAMMAS, alphas=ALPHAS) -> list[tuple[str, dict, float | None]]:
    """(subdirectory, engine run, synthetic α) for one repeat, in a fixed order."""
    out = []
    for b in batches:
        for g in gammas:
            for a in [None] if g == 0 else alphas:
                run = {"policy": "specmoe", "batch": b, "gamma": g, "draft_experts": DRAFT_EXPERTS}
                out.append((subdir(a), run, a))
    return out


def measure(
    out: Path = DATA, repeats: int = REPEATS, budget_s: float = 840.0, plan: list | None = None
) -> int:
    """Every configuration of `plan` (default: `sweep()`), `repeats` times, repeats outermost and
    shuffled per repeat."""
    sys.path.insert(0, str(REPO / "experiments"))
    import engine_runs as er
    import torch
    from specmoe.engine.weights import random_model

    torch.set_num_threads(1)
    plan = plan or sweep()
    cfg = er.model_config(
        PRESET,
        None,
        max(BATCHES),
        er.seq_len_needed(RUN["prompt_len"], RUN["max_new_tokens"], max(GAMMAS)),
    )
    w = random_model(cfg, seed=0)
    t0, written = time.perf_counter(), 0
    for rep in range(repeats):
        order = list(plan)
        random.Random(rep).shuffle(order)
        for sub, run, alpha in order:
            path = out / sub / er.file_name(PRESET, run, rep)
            if path.exists():
                continue
            if time.perf_counter() - t0 > budget_s:
                print(
                    f"budget of {budget_s:.0f} s spent: stopping before repeat {rep}'s {path.name}"
                )
                return written
            path.parent.mkdir(parents=True, exist_ok=True)
            tps = er.run_one(w, run, path, seed=rep, synthetic_acceptance=alpha or 0.0, **RUN)
            written += 1
            print(
                f"[{time.perf_counter() - t0:6.0f} s] {sub}/{path.name}: {tps:.1f} tokens/s",
                flush=True,
            )
    return written


# ------------------------------------------------------------------------------------ analysis


def load_runs(data: Path = DATA) -> list:
    """Every committed sweep trace as a specmoe.fit.validate.Run."""
    from specmoe.measure.ingest import read_run

    paths = sorted(data.glob("*/*.jsonl.gz"))
    if not paths:
        from specmoe.errors import SpecMoEError

        raise SpecMoEError(
            f"{data}: no gamma-sweep traces (run `python {Path(__file__).name} measure`)"
        )
    return [read_run(p) for p in paths]


def rep_of(run) -> int:
    return int(Path(run.path).name.rsplit("-r", 1)[1].split(".")[0])


def curves(runs) -> dict[tuple[float, int], dict[int, list]]:
    """{(α, batch): {γ: [runs]}}; the γ = 0 runs of a batch belong to every α."""
    plain: dict[int, list] = {}
    spec: dict[tuple[float, int], dict[int, list]] = {}
    for r in runs:
        if r.gamma == 0:
            plain.setdefault(r.batch, []).append(r)
        else:
            spec.setdefault((round(r.alpha, 6), r.batch), {}).setdefault(r.gamma, []).append(r)
    for (a, b), by_g in spec.items():
        if b in plain:
            by_g[0] = plain[b]
    return {
        k: dict(sorted(v.items()))
        for k, v in sorted(spec.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    }


def point(group: list) -> dict:
    """Measured tokens/s of one γ: from the median decode time (as validate), with the spread."""
    r0 = group[0]
    decode = statistics.median(r.decode_s for r in group)
    tps = sorted(r.tokens_per_s for r in group)
    cpu = [
        r.tokens_per_s * r.header.get("interference", {}).get("wall_over_cpu", 1.0) for r in group
    ]
    return {
        "tokens_per_s": r0.batch * (r0.max_new_tokens - 1) / decode,
        "min": tps[0],
        "max": tps[-1],
        "repeats": len(group),
        "cpu_time_tokens_per_s": statistics.median(cpu),
        "by_rep": {rep_of(r): r.tokens_per_s for r in group},
    }


def pooled_routing(group: list):
    """Mean of the runs' measured per-layer inclusion probabilities (the workload's routing)."""
    import numpy as np

    from specmoe.inputs.workload import Routing

    probs = [np.asarray(r.routing.probs) for r in group if r.routing.kind == "empirical"]
    if not probs:
        return Routing()
    return Routing(
        kind="empirical",
        probs=tuple(map(tuple, np.mean(probs, axis=0).tolist())),
        source=f"measured: mean of {len(probs)} gamma=0 runs",
    )


def planner_choice(run0, routing, alpha: float, system, static_batch: bool = False) -> dict:
    """specmoe.planning.search.plan restricted to specmoe, N = 2, γ ∈ GAMMAS, on the run's
    workload."""
    from specmoe.planning.search import plan

    return plan(
        model=run0.model,
        hardware=system,
        batch=run0.batch,
        policies=("specmoe",),
        gammas=GAMMAS,
        draft_experts=[DRAFT_EXPERTS],
        acceptance=alpha,
        routing=routing,
        prompt_len=run0.prompt_len,
        output_len=run0.max_new_tokens,
        explain=False,
        static_batch=static_batch,
    )


def static_batch_prediction(group: list, alpha: float, system) -> float:
    """specmoe.fit.validate's prediction of this configuration: the same iteration model, plus the
    rounds a static batch takes until its slowest sequence has all its tokens."""
    from specmoe.fit.validate import predict_run

    r = group[0]
    if r.gamma:
        r = replace(r, alpha=alpha)
    return predict_run(r, system)["tokens_per_s"]


def paired_ratios(points: dict[int, dict], planned: int) -> list[float]:
    """Per repeat (the γ of one repeat ran interleaved): planned γ's tokens/s over that repeat's
    best."""
    reps = set.intersection(*(set(p["by_rep"]) for p in points.values()))
    return [
        points[planned]["by_rep"][k] / max(p["by_rep"][k] for p in points.values())
        for k in sorted(reps)
    ]


def analyse(runs=None, system=None, static: bool = True) -> list[dict]:
    """One row per (α, batch): measured curve, planner's γ and the comparison."""
    from specmoe.inputs.hardware import load_system
    from specmoe.planning.search import compare_with_measured

    runs = load_runs() if runs is None else runs
    system = system or load_system(PROFILE)
    rows = []
    for (alpha, batch), by_g in curves(runs).items():
        pts = {g: point(grp) for g, grp in by_g.items()}
        routing = pooled_routing(by_g.get(0, next(iter(by_g.values()))))
        p = planner_choice(next(iter(by_g.values()))[0], routing, alpha, system)
        cands = {c["gamma"]: c for c in p["candidates"] if c["draft_experts"] == DRAFT_EXPERTS}
        planned = p["best"]["gamma"]
        cmp = compare_with_measured(
            [(g, v["tokens_per_s"]) for g, v in pts.items()], planned, TARGET
        )
        best = cmp["best_gamma"]
        row = {
            "alpha": alpha,
            "batch": batch,
            "points": pts,
            "planned_gamma": planned,
            "planner_engine": p["engine"],
            "compare": cmp,
            "predicted": {g: c["tokens_per_s"] for g, c in cands.items()},
            "predicted_sim": {
                g: c["sim_tokens_per_s"] for g, c in cands.items() if c.get("sim_tokens_per_s")
            },
            "within_spread": pts[planned]["tokens_per_s"] >= pts[best]["min"],
            "paired_ratios": paired_ratios(pts, planned),
            "cpu_time_compare": compare_with_measured(
                [(g, v["cpu_time_tokens_per_s"]) for g, v in pts.items()], planned, TARGET
            ),
        }
        ps = planner_choice(next(iter(by_g.values()))[0], routing, alpha, system, static_batch=True)
        row["planned_static_batch_gamma"] = ps["best"]["gamma"]
        row["planned_static_batch_compare"] = compare_with_measured(
            [(g, v["tokens_per_s"]) for g, v in pts.items()], ps["best"]["gamma"], TARGET
        )
        if static:
            sb = {g: static_batch_prediction(by_g[g], alpha, system) for g in by_g}
            row["predicted_static"] = sb
            row["static_gamma"] = max(sb, key=sb.get)
            row["static_compare"] = compare_with_measured(
                [(g, v["tokens_per_s"]) for g, v in pts.items()], row["static_gamma"], TARGET
            )
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ report


def noise(runs) -> dict:
    ratios = [r.header.get("interference", {}).get("wall_over_cpu") for r in runs]
    ratios = [x for x in ratios if x]
    return {
        "runs": len(runs),
        "median_wall_over_cpu": statistics.median(ratios),
        "over_1_15": sum(x > 1.15 for x in ratios),
        "max_wall_over_cpu": max(ratios),
    }


def per_repeat_noise(runs) -> str:
    reps: dict[int, list[float]] = {}
    for r in runs:
        reps.setdefault(rep_of(r), []).append(
            r.header.get("interference", {}).get("wall_over_cpu", 1.0)
        )
    return ", ".join(
        f"r{k} {statistics.median(v):.2f} ({sum(x > 1.15 for x in v)}/{len(v)})"
        for k, v in sorted(reps.items())
    )


def summary_table(rows) -> str:
    lines = [
        (
            "| α | batch | planned γ | measured best γ | ratio | meets 0.97 | planned γ within "
            "best's repeat range | paired ratio (median over repeats) | ratio on CPU time | "
            "static-batch model's γ | its ratio | planner --static-batch γ | its ratio |"
        ),
        "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["compare"]
        pr = statistics.median(r["paired_ratios"]) if r["paired_ratios"] else float("nan")
        sg = r.get("static_gamma", "-")
        sr = f"{r['static_compare']['ratio']:.3f}" if "static_compare" in r else "-"
        lines.append(
            f"| {r['alpha']:.1f} | {r['batch']} | {r['planned_gamma']} | {c['best_gamma']} | "
            f"{c['ratio']:.3f} | {'yes' if c['meets_target'] else 'no'} | "
            f"{'yes' if r['within_spread'] else 'no'} | {pr:.3f} | "
            f"{r['cpu_time_compare']['ratio']:.3f} (best γ {r['cpu_time_compare']['best_gamma']}) "
            f"| {sg} | {sr} | {r['planned_static_batch_gamma']} | "
            f"{r['planned_static_batch_compare']['ratio']:.3f} |"
        )
    return "\n".join(lines)


def curve_table(r) -> str:
    lines = [
        f"### α = {r['alpha']:.1f}, batch {r['batch']}",
        "",
        (
            "| γ | repeats | measured tok/s (median) | min – max | spread % | on CPU time | "
            "planner (analytic) | planner (sim) | static-batch prediction |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g, p in r["points"].items():
        mark = (" ◀ best" if g == r["compare"]["best_gamma"] else "") + (
            " ◀ planned" if g == r["planned_gamma"] else ""
        )
        sim = r["predicted_sim"].get(g)
        st = r.get("predicted_static", {}).get(g)
        lines.append(
            f"| {g}{mark} | {p['repeats']} | {p['tokens_per_s']:.1f} | {p['min']:.1f} – "
            f"{p['max']:.1f} | {100 * (p['max'] - p['min']) / p['tokens_per_s']:.0f} | "
            f"{p['cpu_time_tokens_per_s']:.1f} | {r['predicted'].get(g, float('nan')):.1f} | "
            f"{'-' if sim is None else f'{sim:.1f}'} | {'-' if st is None else f'{st:.1f}'} |"
        )
    return "\n".join(lines)


def measured_seconds(data: Path) -> float | None:
    log = data / "measure_seconds.json"
    return json.loads(log.read_text())["seconds"] if log.exists() else None


def write_report(rows, runs, focus_rows=None, focus_runs=None, path: Path = REPORT) -> None:
    dev = runs[0].header.get("device", {})
    nz = noise(runs)
    sweep_s, focus_s = measured_seconds(DATA), measured_seconds(FOCUS)
    text = f"""# Planner's γ vs the engine's measured best γ (this CPU)

Quality bar (DESIGN.md §11): the γ the planner chooses reaches ≥ 97% of the throughput of the
best measured γ. Device: {dev.get("name")} ({dev.get("cpu_count")} vCPUs, KVM guest, shared with \
other
work), torch {dev.get("torch")}, {dev.get("threads")} torch thread. Engine: \
experiments/engine_runs.py preset
{PRESET} (hidden 512, 8 experts of ffn 1024, top-2, 4 layers, fp32, random weights), policy
specmoe with N = {DRAFT_EXPERTS} draft experts (HotTemporal), static batch, prompt \
{RUN["prompt_len"]}, {RUN["max_new_tokens"]} new
tokens, synthetic acceptance α (each drafted token accepted with probability α), γ ∈ {list(GAMMAS)}.
Profile: hwprofiles/calibrated/cpu-local-calibrated.yaml (experiments/reports/calibration_cpu.md).

Measured tokens/s is the engine's (B·(new tokens − 1) over the decode time) from the median decode
time over the repeats, as `specmoe validate` compares. Repeats ran outermost, each in its own
shuffled order; a run whose wall time exceeded its CPU time by more than 15% was measured again
(up to 4 attempts, the least disturbed kept). Sweep: {nz["runs"]} runs in \
{(sweep_s or 0) / 60:.1f} min, median
wall/CPU {nz["median_wall_over_cpu"]:.2f}, {nz["over_1_15"]} still above 1.15 (max \
{nz["max_wall_over_cpu"]:.2f}). Per repeat (median
wall/CPU, runs above 1.15): {per_repeat_noise(runs)}: other work took the cores during some
repeats, hence spreads of 30-100% of the median.

The planner: `specmoe.planning.search.plan(policies=("specmoe",), gammas={list(GAMMAS)}, \
draft_experts=[{DRAFT_EXPERTS}])` on
the calibrated profile, with the trace header's model (specmoe.fit.validate.read_run), prompt and
output lengths, the routing measured in the γ = 0 runs of that batch and the α the engine drew
with; it ranks analytically and the simulator confirms the top 3 ("planner (sim)", which decides).
"static-batch prediction" is specmoe.fit.validate's prediction of each run: the same cost model and
simulator, times the expected rounds until the batch's slowest sequence has its \
{RUN["max_new_tokens"]} tokens
(specmoe.predictors.rounds.expected_rounds); its argmax is shown as "static-batch model's γ".

## Summary

{summary_table(rows)}

- ratio: measured tokens/s at the planned γ over the best measured γ's (compare_with_measured).
- within the best's repeat range: the planned γ's median ≥ the lowest repeat of the best γ.
- paired ratio: per repeat (all γ of a repeat ran interleaved within ~2 min) the planned γ's
  tokens/s over that repeat's best, median over repeats; every repeat's own best is an upward-biased
  maximum of noisy values, so this ratio is pessimistic.
- on CPU time: tokens/s scaled by the run's wall/CPU ratio (time other work held the core removed).
- planner --static-batch: `plan(..., static_batch=True)`, the planner's own objective for a static
  batch (rounds until the slowest sequence is done, rounds.expected_rounds), as the engine runs.

{verdict(rows)}
"""
    if focus_rows:
        fz = noise(focus_runs)
        text += f"""
## Follow-up: the cell that missed, measured again on a quiet machine

α = 0.7, batch 8, γ ∈ {list(FOCUS_CELL["gammas"])}, {FOCUS_REPEATS} repeats (outermost, shuffled), \
a separate trace set
(experiments/data/cpu/gamma_sweep/focus/, `python experiments/planner_vs_measured.py focus`):
{fz["runs"]} runs in {(focus_s or 0) / 60:.1f} min, median wall/CPU \
{fz["median_wall_over_cpu"]:.2f}, {fz["over_1_15"]} above 1.15. The
planner's inputs are the same except the routing (measured in these γ = 0 runs).

{summary_table(focus_rows)}

{curve_table(focus_rows[0])}

Measured throughput over the best γ's, per γ: {per_gamma_ratios(focus_rows[0])}. \
{runner_up(focus_rows[0])}

{diagnosis(focus_rows[0])}

{static_accuracy(focus_rows[0])}
"""
    text += "\n## Measured and predicted curves (sweep)\n\n" + "\n\n".join(
        curve_table(r) for r in rows
    )
    text += f"""

## Reproduce

    python experiments/planner_vs_measured.py measure   # the sweep, {(sweep_s or 0) / 60:.0f} min \
here (no new run after --budget-s 840)
    python experiments/planner_vs_measured.py focus --repeats {FOCUS_REPEATS} --budget-s 165   # \
the follow-up
    python experiments/planner_vs_measured.py report    # this file (~15 s)

Traces: experiments/data/cpu/gamma_sweep/{{plain,alpha0.7,alpha0.4}}/ and focus/ (gzip JSONL,
specmoe.trace/1, one per run and repeat; header with the run's routing and wall/CPU ratio).
tests/test_planner_measured.py recomputes these tables from the committed traces.
"""
    path.write_text(text)


def verdict(rows) -> str:
    ok = [r for r in rows if r["compare"]["meets_target"]]
    ok_static = [r for r in rows if r["planned_static_batch_compare"]["meets_target"]]
    lines = [
        (
            f"**{len(ok)} of {len(rows)}** (α, batch) cells meet the 0.97 bar on the median curve "
            f"with the planner's default (steady-state) objective; **{len(ok_static)} of "
            f"{len(rows)}** with `static_batch=True`, the objective that matches how these runs "
            "were served."
        )
    ]
    for r in rows:
        c, pts = r["compare"], r["points"]
        if c["meets_target"]:
            continue
        best, pl = pts[c["best_gamma"]], pts[r["planned_gamma"]]
        spread = 100 * (best["max"] - best["min"]) / best["tokens_per_s"]
        lines.append(
            f"- α = {r['alpha']:.1f}, batch {r['batch']}: planned γ = {r['planned_gamma']} "
            f"measured {pl['tokens_per_s']:.1f} tok/s vs {best['tokens_per_s']:.1f} at γ = "
            f"{c['best_gamma']} (ratio {c['ratio']:.3f}); the best γ's repeats span {spread:.0f}% "
            "of its median"
            + (
                "; the planned γ lies within that range"
                if r["within_spread"]
                else "; the planned γ lies below that range"
            )
            + ". "
            + diagnosis(r)
        )
    return "\n".join(lines)


def per_gamma_ratios(r) -> str:
    pts, best = r["points"], r["compare"]["best_tokens_per_s"]
    return ", ".join(f"γ = {g}: {p['tokens_per_s'] / best:.3f}" for g, p in pts.items())


def runner_up(r) -> str:
    """The planner's first two γ by the simulator's throughput (how decided its choice was)."""
    sim = sorted(r["predicted_sim"].items(), key=lambda kv: -kv[1])
    if len(sim) < 2:
        return ""
    (g1, v1), (g2, v2) = sim[:2]
    return (
        f"The planner's first two γ differ by {100 * (v1 / v2 - 1):.2f}% in its own prediction "
        f"(sim: γ = {g1} {v1:.1f}, γ = {g2} {v2:.1f} tok/s)."
    )


def static_accuracy(r) -> str:
    """How well the static-batch prediction follows the measured curve (the cost model's part)."""
    err = {
        g: 100 * (r["predicted_static"][g] / p["tokens_per_s"] - 1) for g, p in r["points"].items()
    }
    return (
        "The static-batch prediction against the measured medians, per γ: "
        + ", ".join(f"γ = {g}: {e:+.1f}%" for g, e in err.items())
        + ". The iteration's cost model follows the measured curve; what misses the bar is the "
        "planner's objective (steady decoding, no end-of-batch tail), not its costs."
    )


def diagnosis(r) -> str:
    """Why the planner's γ and the measured best differ: steady decoding vs the static batch."""
    from specmoe.inputs.workload import tau
    from specmoe.predictors.rounds import expected_rounds

    g, best = r["planned_gamma"], r["compare"]["best_gamma"]
    if g == best or "predicted_static" not in r:
        return ""
    steady = (RUN["max_new_tokens"] - 1) / float(tau(r["alpha"], g))
    rounds = expected_rounds(r["batch"], g, r["alpha"], RUN["max_new_tokens"])
    st = r["predicted_static"]
    return (
        f"The planner predicts steady decoding (analytic {r['predicted'][g]:.1f} tok/s at γ = {g} "
        f"vs {r['predicted'][best]:.1f} at γ = {best}: "
        f"+{100 * (r['predicted'][g] / r['predicted'][best] - 1):.0f}%); in the engine's static "
        f"batch of {r['batch']} the slowest sequence needs {rounds:.2f} rounds for its "
        f"{RUN['max_new_tokens']} tokens instead of {steady:.2f} "
        f"(−{100 * (1 - steady / rounds):.0f}% throughput), and the static-batch prediction "
        f"({st[g]:.1f} at γ = {g}, {st[best]:.1f} at γ = {best}; measured "
        f"{r['points'][g]['tokens_per_s']:.1f} and {r['points'][best]['tokens_per_s']:.1f}) ranks "
        f"γ = {r['static_gamma']} first (ratio {r['static_compare']['ratio']:.3f})."
    )


# ------------------------------------------------------------------------------------ CLI


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("measure", "focus", "report", "all"))
    p.add_argument(
        "--repeats", type=int, default=None, help=f"default {REPEATS} (focus: {FOCUS_REPEATS})"
    )
    p.add_argument(
        "--budget-s", type=float, default=840.0, help="no new run starts after this many seconds"
    )
    args = p.parse_args(argv)
    if args.what in ("measure", "all"):
        timed(DATA, lambda: measure(DATA, args.repeats or REPEATS, args.budget_s))
    if args.what == "focus":  # the cell that missed the bar in the sweep, measured again
        timed(
            FOCUS,
            lambda: measure(
                FOCUS, args.repeats or FOCUS_REPEATS, args.budget_s, sweep(**FOCUS_CELL)
            ),
        )
    if args.what in ("report", "all"):
        runs = load_runs()
        rows = analyse(runs)
        focus_runs = load_runs(FOCUS) if any(FOCUS.glob("*/*.jsonl.gz")) else None
        focus_rows = analyse(focus_runs) if focus_runs else None
        write_report(rows, runs, focus_rows, focus_runs)
        print(summary_table(rows))
        if focus_rows:
            print(summary_table(focus_rows))


def timed(data: Path, fn) -> None:
    """Run a measurement; add its seconds and runs to data/measure_seconds.json (resumed sweeps
    sum)."""
    t0 = time.perf_counter()
    n = fn()
    data.mkdir(parents=True, exist_ok=True)
    log = data / "measure_seconds.json"
    prev = json.loads(log.read_text()) if log.exists() else {"seconds": 0.0, "runs": 0}
    out = {
        "seconds": round(prev["seconds"] + time.perf_counter() - t0, 1),
        "runs": prev["runs"] + n,
    }
    log.write_text(json.dumps(out) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
