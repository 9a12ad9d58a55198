"""The one Prediction form every predictor returns to callers: a JSON-ready dict per
configuration."""
from __future__ import annotations

from typing import Any

import numpy as np

from specmoe.costs.evidence import evidence_for
from specmoe.costs.memory import Memory
from specmoe.inputs.setup import Setup
from specmoe.predictors.analytic import AnalyticResult
from specmoe.predictors.intervals import evaluate_intervals, interval_block, provenance

GB = 1e9  # reports use GB = 1e9 bytes, as the datasheets do


def intervals_for(
    setup: Setup, gamma=None, draft_experts=None, batch=None
) -> dict[str, np.ndarray]:
    """p10/p50/p90 arrays ([3, n]) of the setup's policy over configurations (intervals module)."""
    return evaluate_intervals(setup.model, setup.system, setup.workload, setup.policy, batch=batch,
                              gamma=gamma, draft_experts=draft_experts)


def summarize(setup: Setup, res: AnalyticResult, i: int = 0,
              intervals: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """One configuration of an AnalyticResult as the JSON object the CLI prints.

    intervals: `intervals_for`'s arrays over the same configurations (computed here when absent):
    the dict gains tokens_per_s_p10/p50/p90, tpot_ms_*, ttft_ms_* and an `evidence` block."""
    def at(a):
        return float(np.ravel(a)[i])

    fits = bool(np.ravel(res.fits)[i])
    need = at(res.gpu_memory_bytes) / GB
    have = Memory(setup.model, setup.system, setup.workload).capacity_bytes / GB
    out = {
        **setup.echo(),
        "fits": fits,
        "tokens_per_s": at(res.tokens_per_s) if fits else None,
        "tpot_ms": at(res.tpot_ms) if fits else None,
        "ttft_ms": at(res.ttft_ms) if fits else None,
        "iteration_ms": at(res.iteration_s) * 1e3,
        "tokens_per_iteration": at(res.tokens_per_iteration),
        "h2d_bytes_per_token": at(res.h2d_bytes_per_token),
        "h2d_bytes_per_iteration": at(res.h2d_bytes_per_iteration),
        "gpu_memory_gb": need,
        "gpu_capacity_gb": have,          # usable: HBM × utilisation − CUDA context
        "gpu_hbm_gb": setup.system.gpu.hbm_gb,
        "resident_experts_per_layer": int(np.ravel(res.resident_experts_per_layer)[i]),
        "breakdown": {k: at(v) for k, v in res.breakdown.items()},
        "calibrated": bool(setup.system.calibration) or evidence_for(setup.system).calibrated,
    }
    iv = intervals if intervals is not None else intervals_for(setup)
    block = interval_block(iv, i if np.size(iv["tokens_per_s"]) > 3 else 0)
    out.update({k: (v if fits else None) for k, v in block.items()})
    out["evidence"] = provenance(setup.system, setup.workload.acceptance)
    out["evidence"]["op_sources"] = op_sources_words(res.op_sources)
    if not fits:
        cap = Memory(setup.model, setup.system, setup.workload)
        out["reason"] = (
            f"needs {need:.1f} GB of GPU memory; {setup.system.name} allows "
            f"{cap.explain_capacity()} (model resident {setup.model.resident_bytes / GB:.1f} GB)"
        )
    return out


OP_WORDS = {"moe": "fused MoE", "gemm": "dense GEMMs", "attn_decode": "decode attention",
            "attn_prefill": "prefill attention"}


def op_sources_words(phases: dict[str, dict[str, dict[str, int]]]) -> dict[str, str]:
    """Per op, which source answered in each phase: 'decoding step: measured table; prefill:
    fitted model' ('measured table for n of m' where both did, e.g. GEMMs of several shapes)."""
    out: dict[str, list[str]] = {}
    for phase, counts in phases.items():
        for op, c in counts.items():
            n, total = c.get("table", 0), c.get("table", 0) + c.get("model", 0)
            if total:
                word = ("measured table" if n == total else "fitted model" if n == 0
                        else f"measured table for {n} of {total}, fitted model the rest")
                out.setdefault(OP_WORDS.get(op, op), []).append(f"{PHASE_WORDS[phase]}: {word}")
    return {op: "; ".join(v) for op, v in out.items()}


PHASE_WORDS = {"step": "decoding step", "prefill": "prefill"}
