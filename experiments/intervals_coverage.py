"""Coverage of the prediction intervals on held-out measurements (DESIGN.md §10.5, §11).

    python experiments/intervals_coverage.py      # -> experiments/reports/intervals_coverage.md

Held-out data on this CPU machine: the engine's end-to-end runs in experiments/data/cpu/e2e/heldout
(configurations the cpu-local calibration never saw; 3 repeats each). For each configuration the
prediction is `specmoe validate`'s (analytic predictor; the engine's α from the trace, so α is an
input here, not an uncertainty) and its p10–p90 band is the relative band that
specmoe.predictors.intervals propagates from the profile's parameter spreads. A measurement is
covered when it lies inside the band. Target: 70–90% (DESIGN.md §11).
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from specmoe.fit.validate import _workload, predict_run
from specmoe.inputs.hardware import load_system
from specmoe.measure.ingest import group_runs, read_run
from specmoe.predictors.intervals import DRAWS, evaluate_intervals

HERE = Path(__file__).resolve().parent
HELDOUT = sorted((HERE / "data" / "cpu" / "e2e" / "heldout").glob("*.jsonl.gz"))
OUT = HERE / "reports" / "intervals_coverage.md"
PROFILES = (
    (
        "cpu-local-calibrated",
        True,
        "fitted on experiments/data/cpu/e2e/train; parameter spreads = 1.25 x "
        "per-op hold-out MAPE, model_error = 1.25 x the iteration stage's hold-out MAPE (13.1%), "
        "both read from the profile's calibration.holdout",
    ),
    (
        "cpu-local-calibrated",
        False,
        "the same profile with its parameter spreads only (model_error "
        "dropped): what per-op hold-out error alone gives",
    ),
    (
        "cpu-local",
        True,
        "the uncalibrated name: its GPU part and model_error come from the calibrated "
        "profile (evidence rule 2), the link (host-memcpy, measured peak) has no prior",
    ),
)


def _system(profile: str, with_model_error: bool):
    system = load_system(profile)
    if with_model_error:
        return system
    cal = copy.deepcopy(system.calibration)  # the iteration stage's hold-out error is the
    cal["holdout"]["mape"].pop("iteration", None)  # model error (specmoe.costs.evidence)
    return system.model_copy(update={"calibration": cal})


def band(run, system) -> tuple[float, float]:
    """(p10/p50, p90/p50) of tokens/s for the run's configuration on `system`."""
    pol = run.policy if run.speculative else run.policy.with_(gamma=0)
    iv = evaluate_intervals(
        run.model,
        system,
        _workload(run),
        pol,
        alpha=run.alpha if run.speculative else None,
        alpha_spread=0.0,
    )
    p10, p50, p90 = np.ravel(iv["tokens_per_s"])
    return p10 / p50, p90 / p50


def rows_for(profile: str, with_model_error: bool) -> list[dict]:
    system = _system(profile, with_model_error)
    rows = []
    for group in group_runs([read_run(str(p)) for p in HELDOUT]):
        run = group[0]
        pred = predict_run(run, system, predictor="analytic")["tokens_per_s"]
        lo, hi = band(run, system)
        measured = [r.tokens_per_s for r in group]
        med = float(np.median(measured))
        rows.append(
            {
                "config": f"{run.model_label} {run.policy.name} b{run.batch} g{run.gamma}",
                "predicted": pred,
                "p10": pred * lo,
                "p90": pred * hi,
                "median": med,
                "repeats": measured,
                "median_in": pred * lo <= med <= pred * hi,
                "repeats_in": sum(pred * lo <= m <= pred * hi for m in measured),
            }
        )
    return rows


def report() -> str:
    lines = [
        "# Coverage of the p10–p90 prediction interval on held-out CPU engine runs",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Command: `python experiments/intervals_coverage.py` ({DRAWS} Latin-hypercube draws, "
        f"{len(HELDOUT)} held-out traces).",
        "",
    ]
    for profile, with_error, what in PROFILES:
        rows = rows_for(profile, with_error)
        n_rep = sum(len(r["repeats"]) for r in rows)
        cov_med = sum(r["median_in"] for r in rows) / len(rows)
        cov_rep = sum(r["repeats_in"] for r in rows) / n_rep
        widths = [r["p90"] / r["p10"] - 1 for r in rows]
        title = profile + ("" if with_error else ", parameter spreads only")
        lines += [
            f"## {title}",
            "",
            what,
            "",
            f"- configurations: {len(rows)}; median measurement inside p10–p90: "
            f"**{cov_med:.0%}** ({sum(r['median_in'] for r in rows)}/{len(rows)})",
            f"- individual repeats inside p10–p90: **{cov_rep:.0%}** "
            f"({sum(r['repeats_in'] for r in rows)}/{n_rep})",
            f"- band width p90/p10 − 1: median {np.median(widths):.0%}, max {max(widths):.0%}",
            "",
            "| configuration | predicted tok/s | p10 | p90 | measured (median) | repeats "
            "| in band |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for r in sorted(rows, key=lambda r: r["config"]):
            reps = ", ".join(f"{m:.1f}" for m in r["repeats"])
            lines.append(
                f"| {r['config']} | {r['predicted']:.1f} | {r['p10']:.1f} | {r['p90']:.1f} | "
                f"{r['median']:.1f} | {reps} | {'yes' if r['median_in'] else 'no'} "
                f"({r['repeats_in']}/{len(r['repeats'])}) |"
            )
        lines.append("")
    lines += [
        "Reading: the engine's α is known from its trace, so the band here comes from the cost "
        "parameters' spreads and, where the profile states one, the end-to-end model error. "
        "Parameter spreads alone (per-op hold-out error) are far too narrow: the per-op errors "
        "do not add up to the end-to-end error (overlap is mispredicted systematically, "
        "−20 to −30%), so the band must carry the iteration stage's own hold-out error. With "
        "it, medians are over-covered (above the 70–90% target: the band is wider than it "
        "needs to be for medians) and single repeats sit at the target's upper edge; repeats "
        "of one configuration on this shared 2-vCPU machine differ by 19% (median; "
        "experiments/reports/calibration_cpu.md). No GPU data was available to check the GPU "
        "priors' bands."
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    if not HELDOUT:
        print("no held-out traces under experiments/data/cpu/e2e/heldout", file=sys.stderr)
        return 1
    text = report()
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, prefix=".tmp-", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, OUT)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
