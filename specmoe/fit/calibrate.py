"""Calibration: fit the cost model's parameters (CostParams) to engine traces (DESIGN.md §10).

    specmoe calibrate TRACES... --hardware BASE -o hwprofiles/calibrated/NAME.yaml [--html R.html]

Every timed op event becomes a point: events with the same op and configuration (shape, tokens,
bytes, ...) are repeats, summarised by their median. A point's predicted time comes from the very
CostModel method the analytic model and the simulator call (`OPS` below maps an event to it), so
calibration fits the one cost model and never a second one. Two stages:

1. Op events (microbenchmarks, and the op spans inside end-to-end runs) fit the efficiencies and
   overheads of the ops present: GEMM/expert/attention (gemm_compute_eff, gemm_half_tokens, hbm_eff,
   kernel_overhead_us, attn_eff), copies (link_eff, transfer_setup_us, pageable_eff), CPU experts
   (cpu_compute_eff, cpu_mem_eff, cpu_overhead_us). scipy.optimize.least_squares on relative
   residuals within bounds; k-fold hold-out over distinct configurations ("by shape").
2. End-to-end runs (traces with `iteration` events) fit layer_overhead_us, the per-layer time no op
   span covers (residual adds, host bookkeeping), with stage 1 held fixed; the iteration time is
   predicted by `specmoe.fit.validate.predict_run`, the same predictor `specmoe validate` uses.

A parameter no present op depends on keeps the base profile's value and is listed as fixed.
Bad input raises SpecMoEError naming the file and field: traces from different devices, missing
fields, fewer points than the parameters need, a fit that does not converge.

Event fields read (the engine's microbenchmarks, engine/microbench.py, and its traced runs write
them; dims fall back to the header's `model`, an engine MoEConfig dict with hidden, heads,
kv_heads, head_dim, experts, top_k, expert_ffn, vocab, dtype):
  gemm        shape [m, n, k]: x[m, k] @ W[k, n]                    -> CostModel.gemm
  expert      tokens, shape [tokens, hidden, ffn]: one SwiGLU expert -> CostModel.experts(tokens, 1)
  moe         tokens, experts (distinct), top_k, max_expert_tokens (the busiest expert's;
              default an even spread), gated (default true), shape [tokens, hidden, ffn]
              (else the header
              model's hidden, expert_ffn, top_k): the engine's fused_moe span
              -> CostModel.experts(tokens·top_k, experts); the engine's per-layer span named
              "moe" (fetches + compute + bookkeeping) is a composite and is not fitted
  attn        the engine's attention block (norm, q/k/v/o projections, RoPE, scores), tokens,
              shape [batch, T, context]                              -> CostModel.attention_block
              the microbenchmark's scores-only attention (name "attention", shape [batch, T,
              context, heads, kv_heads, head_dim])                   -> its scores term
  gate        tokens                                                 -> CostModel.router_and_shared
  lm_head     tokens                                                 -> CostModel.lm_head
  h2d         bytes, pinned (default: true on CUDA, where the engine page-locks its host
              weights; false elsewhere), chunk (bytes per copy; default all) -> CostModel.h2d
  cpu_expert  tokens, shape [tokens, hidden, ffn]                    -> CostModel.cpu_expert
  dtype: event `dtype`, else the header model's dtype. `samples_us` (every rep), where present,
  are the repeats; else events with the same op and inputs are. d2h is not fitted (the cost model
  has no D2H entry point yet).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from html import escape as html_escape
from pathlib import Path
from typing import Any

import numpy as np

from specmoe.costs.ops import PARAM_NAMES, CostParams, declared_params
from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write_text
from specmoe.fit.op_map import E2E_PARAMS, OPS, OpPredictor, param_map, params_needed
from specmoe.fit.points import collect_points, load_traces
from specmoe.fit.solver import BOUNDS, FitOptions, Stage, fit_stage
from specmoe.fit.validate import predict_run
from specmoe.inputs.hardware import System, load_system
from specmoe.measure.ingest import device_identity, group_runs, read_run

US = 1e-6


# ------------------------------------------------------------------------------------ calibration

@dataclass
class Calibration:
    system: Any                     # the calibrated System
    ops: Stage | None
    e2e: Stage | None
    fixed: dict[str, Any]
    traces: list[dict]

    def unidentified(self) -> list[str]:
        return [n for st in (self.ops, self.e2e) if st is not None for n in st.unidentified]

    def holdout_mape(self) -> dict[str, dict[str, float]]:
        out = {}
        for st in (self.ops, self.e2e):
            if st is not None:
                out.update(st.mape("holdout"))
        return out


def _stage_params(stage: Stage | None) -> dict[str, dict]:
    if stage is None:
        return {}
    f = stage.fit
    return {n: {"value": float(v), "stderr": float(s) if np.isfinite(s) else None, "at_bound": a,
                "degenerate": n in f.degenerate, "bounds": list(BOUNDS[n])}
            for n, v, s, a in zip(f.names, f.values, f.stderr, f.at_bound)}


def _kind(t) -> str:
    return "end-to-end" if t.by_cat("iteration") else "microbenchmark"


def _file_info(t) -> dict:
    data = Path(t.path).read_bytes()
    return {"file": str(t.path), "sha256": hashlib.sha256(data).hexdigest()[:16],
            "events": len(t.events), "kind": _kind(t)}


def calibrate(trace_paths: Sequence[str | Path], hardware, name: str | None = None,
              opts: FitOptions | None = None, command: str | None = None) -> Calibration:
    """Fit a calibrated System from traces; `hardware` is the base system (name, path or System)."""

    opts = opts or FitOptions()
    base_system = hardware if isinstance(hardware, System) else load_system(hardware)
    traces = load_traces(trace_paths)
    fix = dict(opts.fix)
    base = replace(declared_params(base_system), **{k: v for k, v in fix.items() if v is not None})
    op_sources = [t for t in traces if opts.op_traces in ("all", _kind(t))]
    points = collect_points(op_sources, opts.min_samples)
    if not points:
        raise SpecMoEError(f"calibrate: no timed op events (cats {sorted(OPS)}) with at least "
                           f"{opts.min_samples} sample(s) in {[str(t.path) for t in traces]}")
    replay = any(t.header.get("replay") for t in op_sources)
    pmap = param_map(opts.groups, replay)
    names = [n for n in params_needed(points, pmap) if n not in fix]
    ops = fit_stage(OpPredictor(points, base_system, replay),
                    np.array([p.quantile(opts.quantile) for p in points]),
                    [p.cat for p in points], [p.label() for p in points],
                    np.array([p.spread for p in points]), names, base, opts, "calibrate (ops)",
                    pmap)
    params = replace(base, **dict(zip(ops.fit.names, map(float, ops.fit.values))))
    e2e = None if "layer_overhead_us" in fix else _fit_e2e(traces, base_system, params, opts)
    if e2e is not None:
        params = replace(params, **dict(zip(e2e.fit.names, map(float, e2e.fit.values))))
    fitted = set(ops.fit.names) | (set(e2e.fit.names) if e2e else set())
    fixed = {n: getattr(params, n) for n in PARAM_NAMES if n not in fitted}
    calib = Calibration(None, ops, e2e, fixed, [_file_info(t) for t in traces])
    calib.system = _calibrated_system(base_system, params, fitted | set(fix), calib, traces, name,
                                      command, opts)
    return calib


def _fit_e2e(traces, system, params: CostParams, opts: FitOptions) -> Stage | None:

    groups = group_runs([read_run(t) for t in traces if t.by_cat("iteration")])
    if not groups:
        return None
    firsts = [g[0] for g in groups]   # repeats share a configuration; the first one's workload

    def predict(p: CostParams) -> np.ndarray:
        return np.array([predict_run(r, system, params=p, predictor="analytic")["iteration_s"]
                         for r in firsts])

    # one point per configuration: the quantile over its repeats of the mean iteration time, its
    # noise the spread of the repeats (or of one run's iterations when it ran once)
    measured = np.array(
        [np.quantile([r.mean_iteration_s for r in g], opts.quantile) for g in groups]
    )
    spread = np.array(
        [
            (max(r.mean_iteration_s for r in g) - min(r.mean_iteration_s for r in g)) / m
            if len(g) > 1
            else g[0].iteration_spread
            for g, m in zip(groups, measured)
        ]
    )
    return fit_stage(
        predict,
        measured,
        ["iteration"] * len(groups),
        [r.label() for r in firsts],
        spread,
        list(E2E_PARAMS),
        params,
        opts,
        "calibrate (end-to-end)",
    )


def _calibrated_system(
    base_system,
    params: CostParams,
    fitted: set,
    calib: Calibration,
    traces,
    name: str | None,
    command: str | None,
    opts: FitOptions,
):
    # None (transfer_setup_us held at the link profile's value) stays out: the profile keeps it
    eff = {
        n: float(getattr(params, n))
        for n in PARAM_NAMES
        if (n in fitted or n in (base_system.efficiency or {})) and getattr(params, n) is not None
    }
    dev = traces[0].header["device"]
    versions = sorted(
        {(t.header["device"].get("torch"), t.header["device"].get("triton")) for t in traces},
        key=str,
    )
    provenance = {
        "tool": "specmoe.fit.calibrate",
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "command": command,
        "base": base_system.name,
        "device": dev,
        "device_identity": device_identity(dev),
        "software": [{"torch": a, "triton": b} for a, b in versions],
        "traces": calib.traces,
        "parameters": {**_stage_params(calib.ops), **_stage_params(calib.e2e)},
        "fixed": {k: v for k, v in calib.fixed.items()},
        "unidentified": calib.unidentified(),
        "options": {
            "loss": opts.loss,
            "f_scale": opts.f_scale,
            "min_samples": opts.min_samples,
            "quantile": opts.quantile,
            "op_traces": opts.op_traces,
            "fix": dict(opts.fix),
            "folds": opts.folds,
            "groups": opts.groups,
        },
        "holdout": {
            "folds": calib.ops.folds if calib.ops else None,
            "by": "distinct op configuration",
            "mape": {
                k: {kk: (round(vv, 5) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                for k, v in calib.holdout_mape().items()
            },
        },
        "fit": {
            st: {
                "rms_relative_residual": s.fit.rms_rel,
                "evaluations": s.fit.nfev,
                "message": s.fit.message,
            }
            for st, s in (("ops", calib.ops), ("end_to_end", calib.e2e))
            if s is not None
        },
    }
    data = base_system.model_dump()
    data.update(
        name=name or f"{base_system.name}-calibrated", efficiency=eff, calibration=provenance
    )
    data["sources"] = {
        **(base_system.sources or {}),
        "efficiency": f"fitted by specmoe.fit.calibrate on {len(traces)} trace(s) from "
        f"{dev.get('name')} ({provenance['date']})",
    }
    return type(base_system).model_validate(data)


def transfer(calibrated, target, name: str | None = None):
    """Cross-device prediction: the target's datasheet profile with another device's fitted
    efficiencies (DESIGN.md §10.4). Validate it against the target's own traces."""

    src = calibrated if isinstance(calibrated, System) else load_system(calibrated)
    dst = target if isinstance(target, System) else load_system(target)
    if not src.calibration:
        raise SpecMoEError(
            f"transfer: {src.name!r} has no calibration block; give a calibrated profile"
        )
    data = dst.model_dump()
    data.update(name=name or f"{dst.name}-from-{src.name}", efficiency=dict(src.efficiency),
                calibration={"tool": "specmoe.fit.calibrate.transfer", "transferred_from": src.name,
                             "source_device_identity": src.calibration.get("device_identity"),
                             "source_date": src.calibration.get("date"),
                             "holdout_on_source": src.calibration.get("holdout")})
    return type(dst).model_validate(data)


# ------------------------------------------------------------------------------------ reports

def holdout_table(calib: Calibration) -> list[dict[str, Any]]:
    rows = []
    for cat, m in calib.holdout_mape().items():
        rows.append({"op": cat, "points": m["points"], "holdout_mape_pct": 100 * m["mape"],
                     "holdout_max_pct": 100 * m["max"],
                     "noise_pct": None if m["noise"] is None else 100 * m["noise"]})
    return rows


def params_table(calib: Calibration) -> list[dict[str, Any]]:
    p = calib.system.calibration["parameters"]
    return [{"parameter": n, "value": v["value"], "stderr": v["stderr"], "at_bound": v["at_bound"],
             "degenerate": v["degenerate"]} for n, v in p.items()]


LARGE_HOLDOUT_PCT = 25.0   # hold-out MAPE above this: the fitted op times are not to be trusted


def fit_warnings(calib: Calibration, large_pct: float = LARGE_HOLDOUT_PCT) -> list[str]:
    """Plain warnings: parameters stuck at a bound of their range, and ops whose hold-out error is
    large. Either means the traces did not determine the profile;
    its numbers are not measurements."""
    out = []
    params = calib.system.calibration["parameters"]
    for name, v in params.items():
        if v["at_bound"] and not v["degenerate"]:
            lo, hi = v.get("bounds", (None, None))
            side = (
                "upper"
                if hi is not None and abs(v["value"] - hi) <= abs(v["value"] - (lo or 0))
                else "lower"
            )
            out.append(
                f"{name} = {v['value']:.4g} sits at the {side} bound of its range {lo}..{hi}: "
                "the traces do not pin it down (fit traces of one kind, e.g. the GEMM and expert "
                "microbenchmarks of one run, or --fix it)"
            )
    for r in holdout_table(calib):
        if r["holdout_mape_pct"] > large_pct:
            out.append(
                f"{r['op']}: hold-out error {r['holdout_mape_pct']:.0f}% (over {large_pct:.0f}%): "
                "predictions of this op are not reliable"
            )
    return out


def markdown_tables(calib: Calibration) -> str:
    lines = ["| op | points | hold-out MAPE % | hold-out max % | repeat noise (IQR/median) % |",
             "|---|---:|---:|---:|---:|"]
    for r in holdout_table(calib):
        noise = "-" if r["noise_pct"] is None else f"{r['noise_pct']:.1f}"
        lines.append(f"| {r['op']} | {r['points']} | {r['holdout_mape_pct']:.2f} | "
                     f"{r['holdout_max_pct']:.1f} | {noise} |")
    lines += ["", "| parameter | value | ± (1σ, approx.) | note |", "|---|---:|---:|---|"]
    for r in params_table(calib):
        note = ", ".join(
            w
            for w, on in (
                ("at bound", r["at_bound"]),
                ("degenerate: only a combination is determined", r["degenerate"]),
            )
            if on
        )
        err = "∞" if r["stderr"] is None else f"{r['stderr']:.2g}"
        lines.append(f"| {r['parameter']} | {r['value']:.4g} | {err} | {note} |")
    dead = calib.unidentified()
    degenerate = [r["parameter"] for r in params_table(calib) if r["degenerate"]]
    if degenerate:
        lines += ["", "Degenerate (the traces determine only a combination of these; each value "
                  "alone is not a measurement): " + ", ".join(degenerate)]
    if dead:
        lines += ["", "Not identifiable from these traces (no prediction moves with them; base "
                  "profile values kept): " + ", ".join(dead)]
    rest = {k: v for k, v in calib.fixed.items() if k not in dead}
    if rest:
        lines += ["", "Not fitted (fixed, or no op in the traces depends on them): "
                  + ", ".join(f"{k}={v}" for k, v in rest.items())]
    return "\n".join(lines)


def markdown_html(text: str) -> str:
    """The Markdown of `markdown_tables` as HTML: pipe tables become tables,
    other lines paragraphs."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            out.append("<table><tr>" + "".join(f"<th>{html_escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html_escape(c)}</td>" for c in r) + "</tr>"
                                 for r in body) + "</table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html_escape(line)}</p>")
    flush()
    return "\n".join(out)


def write_html(calib: Calibration, path: str | Path, plotlyjs: str | bool = "cdn") -> Path:
    """Parity plots (hold-out predicted vs measured, log-log) per stage, plus the tables.

    plotlyjs: "cdn" links plotly.js (small files for committed reports; needs a network to view),
    True embeds it (opens offline; what `specmoe calibrate --html` writes)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    stages = [
        (t, s)
        for t, s in (("ops (hold-out)", calib.ops), ("end-to-end iteration (hold-out)", calib.e2e))
        if s is not None
    ]
    fig = make_subplots(rows=1, cols=len(stages), subplot_titles=[t for t, _ in stages])
    for col, (_, st) in enumerate(stages, start=1):
        lo = float(min(st.measured.min(), np.nanmin(st.holdout))) * 1e6 * 0.8
        hi = float(max(st.measured.max(), np.nanmax(st.holdout))) * 1e6 * 1.25
        for cat in sorted(set(st.cats)):
            sel = np.asarray(st.cats) == cat
            fig.add_trace(
                go.Scatter(
                    x=st.measured[sel] * 1e6,
                    y=st.holdout[sel] * 1e6,
                    mode="markers",
                    name=cat,
                    text=[l for l, s in zip(st.labels, sel) if s],
                    legendgroup=cat,
                ),
                row=1,
                col=col,
            )
        for f, dash in ((1.0, "solid"), (1.05, "dot"), (0.95, "dot")):
            fig.add_trace(
                go.Scatter(
                    x=[lo, hi],
                    y=[lo * f, hi * f],
                    mode="lines",
                    showlegend=False,
                    line={"color": "grey", "dash": dash, "width": 1},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(type="log", title="measured (µs)", row=1, col=col)
        fig.update_yaxes(type="log", title="predicted (µs)", row=1, col=col)
    dev = calib.system.calibration["device"].get("name")
    fig.update_layout(
        title=f"Calibration {calib.system.name} on {dev}<br><sup>hold-out: predicted against "
        "measured time per op configuration; solid = equal, dotted = ±5%</sup>",
        height=560,
        width=max(900, 560 * len(stages)),
        template="plotly_white",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    esc = html_escape
    intro = (
        "<p>Each dot is one op configuration, left out of the fit and predicted by the parameters "
        "fitted to the others (k-fold hold-out). Dots on the diagonal are predicted exactly; the "
        "tables give the error per op and each fitted parameter with its uncertainty.</p>"
    )
    warn = "".join(f"<p style='color:#a00'>warning: {esc(w)}</p>" for w in fit_warnings(calib))
    page = fig.to_html(include_plotlyjs=plotlyjs, full_html=True)
    style = (
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.45}"
        "table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style>"
    )
    page = page.replace("<head>", "<head><meta charset='utf-8'>" + style, 1)
    page = page.replace(
        "<body>",
        "<body><h1>" + esc(f"specmoe calibration: {calib.system.name}") + "</h1>" + intro + warn,
        1,
    )
    table = markdown_html(markdown_tables(calib))
    atomic_write_text(path, page.replace("</body>", table + "</body>"))
    return path
