"""Validation: predict measured end-to-end engine runs with a (calibrated) profile,
report the error.

    specmoe validate TRACES... --hardware CALIBRATED [--predictor auto|sim|analytic] [--markdown F]

Each end-to-end trace's header says what ran (model: the engine's MoEConfig; workload: batch,
prompt lengths, max_new_tokens, synthetic acceptance; policy: the shared Policy fields). The
measured throughput is the engine's: decoded tokens B·(max_new_tokens − 1) over the decode time
(first iteration start to last iteration end). The prediction runs the simulator where it is
importable, else the analytic model, on the same configuration:
- routing: the header's measured per-layer inclusion probabilities (`routing.inclusion_probs`)
  where present, else uniform;
- acceptance: the synthetic α the engine drew with, else α solved from the accepted tokens in the
  trace's `accept` events (acceptance is an input of the models, not something they predict);
- a static batch runs until its slowest sequence has max_new_tokens, so a speculative run takes
  more rounds than B·(max_new − 1)/(B·τ): `expected_rounds` counts them for i.i.d. acceptance.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specmoe.costs.ops import prediction_costs
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import System, load_system
from specmoe.inputs.workload import Acceptance, Workload
from specmoe.measure.ingest import Run, device_identity, group_runs, read_run
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.rounds import expected_rounds
from specmoe.predictors.sim import simulate

# ------------------------------------------------------------------------------------ prediction

def predict_run(run: Run, system, params=None, predictor: str = "auto") -> dict[str, Any]:
    """Predicted iteration time and tokens/s of a run's configuration on `system`."""
    if predictor not in ("auto", "sim", "analytic"):
        raise SpecMoEError(f"predictor={predictor!r}: allowed auto, sim, analytic")
    if predictor in ("sim", "auto"):    # auto: the simulator, the reference where they differ
        return _predict_sim(run, system, params)
    return _predict_analytic(run, system, params)


def _workload(run: Run):
    return Workload(batch=run.batch, prompt_len=run.prompt_len, output_len=run.max_new_tokens,
                    routing=run.routing, acceptance=Acceptance(alpha=run.alpha or 0.0,
                                                               source=run.alpha_source))


def _predict_analytic(run: Run, system, params) -> dict[str, Any]:

    an = Analytic(run.model, system, _workload(run), prediction_costs(run.model, system, params))
    pol = run.policy if run.speculative else run.policy.with_(gamma=0)
    if run.speculative:
        res = an.evaluate(pol, alpha=run.alpha)
    elif pol.name == "specmoe":
        res = an.evaluate(pol, gamma=0)
    else:
        res = an.evaluate(pol)
    it = float(np.ravel(res.iteration_s)[0])
    return _tokens(run, it, "analytic")


def _predict_sim(run: Run, system, params) -> dict[str, Any]:
    """The simulator's mean iteration time on this configuration (API:
    specmoe.predictors.sim.simulate)."""

    pol = run.policy
    res = simulate(model=run.model, system=system, workload=_workload(run), policy=pol,
                   params=params)
    it = float(getattr(res, "iteration_s", None) or res["iteration_s"])
    return _tokens(run, it, "sim")


def _tokens(run: Run, iteration_s: float, predictor: str) -> dict[str, Any]:
    rounds = (expected_rounds(run.batch, run.gamma, run.alpha, run.max_new_tokens)
              if run.speculative else run.max_new_tokens - 1)
    decode_s = rounds * iteration_s
    return {"iteration_s": iteration_s, "rounds": rounds, "decode_s": decode_s,
            "tokens_per_s": run.batch * (run.max_new_tokens - 1) / decode_s, "predictor": predictor}


# ------------------------------------------------------------------------------------ validation

def validate(trace_paths: Sequence[str | Path], hardware, predictor: str = "auto",
             compare_analytic: bool = True, quantile: float = 0.5) -> dict[str, Any]:
    """Error table, one row per configuration: measured tokens/s from the `quantile` of its
    repeats' decode times (0.5: the median; low on a shared machine) against the prediction
    (made from the first repeat's workload: routing, α)."""

    system = hardware if isinstance(hardware, System) else load_system(hardware)
    if not trace_paths:
        raise SpecMoEError("validate: no trace files given")
    calib_id = (system.calibration or {}).get("device_identity")
    rows = []
    for group in group_runs([read_run(p) for p in sorted(map(str, trace_paths))]):
        run = group[0]
        pred = predict_run(run, system, predictor=predictor)
        tps = [r.tokens_per_s for r in group]
        decode = float(np.quantile([r.decode_s for r in group], quantile))
        meas = run.batch * (run.max_new_tokens - 1) / decode
        same = calib_id is not None and device_identity(run.header.get("device")) == calib_id
        row = {
            "trace": Path(run.path).name,
            "policy": run.policy.name,
            "batch": run.batch,
            "gamma": run.gamma,
            "draft_experts": run.policy.draft_experts if run.speculative else 0,
            "alpha": run.alpha,
            "model": run.model_label,
            "repeats": len(group),
            "measured_tokens_per_s": meas,
            "measured_spread_pct": 100 * (max(tps) - min(tps)) / meas,
            "predicted_tokens_per_s": pred["tokens_per_s"],
            "measured_iteration_ms": 1e3
            * float(np.quantile([r.mean_iteration_s for r in group], quantile)),
            "predicted_iteration_ms": pred["iteration_s"] * 1e3,
            "error_pct": 100 * (pred["tokens_per_s"] - meas) / meas,
            "predictor": pred["predictor"],
            "device": "calibrated" if same else "other",
        }
        if compare_analytic and pred["predictor"] != "analytic":
            ana = predict_run(run, system, predictor="analytic")
            row["analytic_error_pct"] = 100 * (ana["tokens_per_s"] - meas) / meas
        rows.append(row)
    return {"hardware": system.name, "calibrated": bool(system.calibration), "rows": rows,
            "quantile": quantile, "summary": summarize(rows)}


def summarize(rows: list[dict], exclude_policies: Sequence[str] = ()) -> dict[str, Any]:
    """Median and max |error| per device kind (calibrated / other),
    optionally leaving policies out."""
    out = {}
    for dev in sorted({r["device"] for r in rows}):
        sel = [r for r in rows if r["device"] == dev and r["policy"] not in exclude_policies]
        if not sel:
            continue
        errs = [abs(r["error_pct"]) for r in sel]
        out[dev] = {"configurations": len(sel), "median_abs_error_pct": statistics.median(errs),
                    "max_abs_error_pct": max(errs),
                    "mean_signed_error_pct": statistics.mean(r["error_pct"] for r in sel)}
    return out


def markdown_table(result: dict[str, Any], summaries: dict[str, dict] | None = None) -> str:
    """The rows, then one summary line per device kind (and per extra summary given)."""
    ana = any("analytic_error_pct" in r for r in result["rows"])
    lines = [
        "| model | policy | batch | γ | N | α | repeats | measured tok/s | spread % | "
        "predicted tok/s | error % |"
        + (" analytic error % |" if ana else "")
        + " measured ms/iter | predicted ms/iter | predictor | device |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if ana else "")
        + "---:|---:|---|---|",
    ]
    for r in sorted(
        result["rows"], key=lambda r: (r["model"], r["policy"], r["batch"], r["gamma"])
    ):
        a = "-" if r["alpha"] is None else f"{r['alpha']:.2f}"
        extra = f" {r['analytic_error_pct']:+.1f} |" if ana else ""
        lines.append(
            f"| {r['model']} | {r['policy']} | {r['batch']} | {r['gamma']} | "
            f"{r['draft_experts']} | {a} | {r['repeats']} | {r['measured_tokens_per_s']:.1f} | "
            f"{r['measured_spread_pct']:.0f} | "
            f"{r['predicted_tokens_per_s']:.1f} | {r['error_pct']:+.1f} |{extra} "
            f"{r['measured_iteration_ms']:.2f} | {r['predicted_iteration_ms']:.2f} | "
            f"{r['predictor']} | {r['device']} |"
        )
    lines.append("")
    for title, summary in {"all policies": result["summary"], **(summaries or {})}.items():
        for dev, s in summary.items():
            lines.append(
                f"- {title}, {dev} device: {s['configurations']} configurations, median |error| "
                f"{s['median_abs_error_pct']:.1f}%, max |error| {s['max_abs_error_pct']:.1f}%, "
                f"mean signed {s['mean_signed_error_pct']:+.1f}%"
            )
    return "\n".join(lines)
