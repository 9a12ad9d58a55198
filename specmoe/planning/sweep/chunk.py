"""Evaluating one chunk of a sweep group: the analytic model or the simulator over its rows."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from specmoe.costs.ops import BREAKDOWN
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import (
    PARAMS,
    SPECULATIVE,
    make_policy,
)
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import (
    Acceptance,
    Workload,
    check_routing,
    parse_acceptance,
    parse_routing,
)
from specmoe.planning.sweep.grid import GROUP, INNER, POLICY_AXES, RESULT_COLUMNS
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.intervals import evaluate_intervals
from specmoe.predictors.sim import Simulator

# ---- evaluating one chunk ----------------------------------------------------------------------

@lru_cache(maxsize=64)
def _analytic(model: str, hardware: str, routing: str, prompt_len: int, output_len: int):

    spec, rout = load_model(model), parse_routing(routing)
    check_routing(rout, spec.num_experts, spec.name)
    wl = Workload(batch=1, prompt_len=prompt_len, output_len=output_len, routing=rout)
    return Analytic(spec, load_system(hardware), wl)


@lru_cache(maxsize=256)
def _acceptance(raw: str, draft_set: str, model: str):

    return parse_acceptance(raw, draft_set, model=_model(model))


@lru_cache(maxsize=64)
def _model(name: str):
    return load_model(name)


def _policy(g: dict, gamma: int = 0, n: int = 0):

    params = {k: g[k] for k in POLICY_AXES if g[k] is not None}
    return make_policy(g["policy"], gamma=gamma, draft_experts=n, **params)


def _inner_columns(g: dict, start: int, stop: int) -> dict[str, np.ndarray]:
    shape = tuple(len(g[k]) for k in INNER)
    idx = np.unravel_index(np.arange(start, stop), shape)
    cols = {}
    for k, ix in zip(INNER[:3], idx[:3]):
        vals = np.array([0 if v is None else v for v in g[k]], dtype=np.int64)
        cols[k] = vals[ix]
    alpha, label = np.full(stop - start, np.nan), np.full(stop - start, "", dtype=object)
    spread = np.zeros(stop - start)
    draft_set = g["draft_set"] or "hottemporal"
    for j, raw in enumerate(g["alpha"]):
        sel = idx[3] == j
        if raw is None:
            continue
        label[sel] = str(raw)
        if isinstance(raw, str):
            acc = _acceptance(raw, draft_set, g["model"])
            alpha[sel], spread[sel] = acc.alpha_for(cols["draft_experts"][sel]), acc.alpha_spread
        else:
            alpha[sel] = raw
    cols["alpha"], cols["acceptance"], cols["alpha_spread"] = alpha, label, spread
    return cols


def run_chunk(
    g: dict, start: int, stop: int, engine: str = "analytic", sim: dict | None = None
) -> dict[str, np.ndarray]:
    """Evaluate configurations start..stop of group g; returns columns (numpy arrays)."""
    cols = _inner_columns(g, start, stop)
    n = stop - start
    res = _run_analytic(g, cols) if engine == "analytic" else _run_sim(g, cols, sim or {})
    out: dict[str, np.ndarray] = {"engine": np.full(n, engine, dtype=object)}
    for k in GROUP:
        v = g[k]
        if k in POLICY_AXES and PARAMS[k].kind != "choice":
            out[k] = np.full(n, np.nan if v is None else float(v))
        elif k in ("prompt_len", "output_len"):
            out[k] = np.full(n, v, dtype=np.int64)
        else:
            out[k] = np.full(n, "" if v is None else v, dtype=object)
    out.update(cols)
    out.update(res)
    return out


def _run_analytic(g: dict, cols: dict) -> dict[str, np.ndarray]:
    an = _analytic(g["model"], g["hardware"], g["routing"], g["prompt_len"], g["output_len"])
    pol = _policy(g)
    spec = g["policy"] in SPECULATIVE
    alpha = np.where(np.isnan(cols["alpha"]), 0.0, cols["alpha"])
    r = an.evaluate(pol, batch=cols["batch"], gamma=cols["gamma"] if spec else 0,
                    draft_experts=cols["draft_experts"], alpha=alpha)
    fits = np.asarray(r.fits, dtype=bool)
    bcast = lambda a: np.broadcast_to(np.asarray(a, dtype=float), fits.shape)
    nan_unless_fit = lambda a: np.where(fits, bcast(a), np.nan)
    out = {"tokens_per_s": nan_unless_fit(r.tokens_per_s), "tpot_ms": nan_unless_fit(r.tpot_ms),
           "ttft_ms": nan_unless_fit(r.ttft_ms), "iteration_ms": bcast(r.iteration_s) * 1e3,
           "tokens_per_iteration": bcast(r.tokens_per_iteration),
           "h2d_bytes_per_token": bcast(r.h2d_bytes_per_token),
           "h2d_bytes_per_iteration": bcast(r.h2d_bytes_per_iteration),
           "gpu_memory_gb": bcast(r.gpu_memory_bytes) / 1e9, "fits": fits,
           "resident_experts_per_layer": bcast(r.resident_experts_per_layer)}
    for k in BREAKDOWN:
        out[f"t_{k}_ms"] = bcast(r.breakdown.get(k, 0.0)) * 1e3
    iv = evaluate_intervals(an.model, an.system, an.workload, pol, batch=cols["batch"],
                            gamma=cols["gamma"] if spec else 0, draft_experts=cols["draft_experts"],
                            alpha=alpha, alpha_spread=cols["alpha_spread"] if spec else 0.0)
    for k, q in iv.items():
        for j, name in enumerate(("p10", "p50", "p90")):
            out[f"{k}_{name}"] = nan_unless_fit(q[j])
    return out


def _run_sim(g: dict, cols: dict, sim: dict) -> dict[str, np.ndarray]:

    n = len(cols["batch"])
    out = {k: np.full(n, np.nan) for k in RESULT_COLUMNS}
    out.update({f"t_{k}_ms": np.full(n, np.nan) for k in BREAKDOWN})
    out["fits"] = np.zeros(n, dtype=bool)
    spec = g["policy"] in SPECULATIVE
    for i in range(n):
        acc = (
            Acceptance(alpha=float(cols["alpha"][i]), source=cols["acceptance"][i])
            if spec
            else None
        )
        setup = resolve(
            model=g["model"],
            hardware=g["hardware"],
            policy=_policy(g, int(cols["gamma"][i]) if spec else 0, int(cols["draft_experts"][i])),
            batch=int(cols["batch"][i]),
            acceptance=acc,
            routing=g["routing"],
            prompt_len=g["prompt_len"],
            output_len=g["output_len"],
        )
        d = (
            Simulator(setup, iterations=sim.get("iterations", 60), seed=sim.get("seed", 0))
            .run()
            .to_dict()
        )
        for k in RESULT_COLUMNS:
            v = d.get(k)
            out[k][i] = np.nan if v is None else v
        for k in BREAKDOWN:
            out[f"t_{k}_ms"][i] = d.get("breakdown", {}).get(k, 0.0) * 1e3
    return out


def run_chunk_task(args: tuple) -> tuple[int, dict[str, np.ndarray]]:
    chunk_id, g, start, stop, engine, sim = args
    return chunk_id, run_chunk(g, start, stop, engine, sim)
