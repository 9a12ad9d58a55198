"""Choose expert/tensor/data-parallel degrees and whether to shuffle tokens speculatively.

Every (ep, tp) pair whose degrees divide the GPU count (ep ≤ experts, tp ≤ heads), with
speculative token shuffling off and, where the workload gives a prediction accuracy q > 0, on,
is evaluated by the analytic `ParallelModel`. The best throughput among configurations whose
weights, KV cache and experts fit in every GPU's memory wins; if none fits, the best one that
fits with experts offloaded to host memory (fetched on demand) wins and the result says so.
The all-to-all costs are uncalibrated datasheet bandwidths (see `specmoe.costs.comm`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from specmoe.errors import SpecMoEError
from specmoe.predictors.parallel import Parallel, ParallelModel


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def candidates(
    model, gpus: int, accuracy: float, colocation: float | None, overlap: bool
) -> list[Parallel]:
    shuffles = (False, True) if accuracy > 0 else (False,)
    return [
        Parallel(
            ep=ep,
            tp=tp,
            overlap=overlap,
            shuffle=s,
            accuracy=accuracy,
            colocation=colocation if s else None,
        )
        for ep in _divisors(gpus, model.num_experts)
        for tp in _divisors(gpus, model.num_heads)
        for s in shuffles
    ]


def _row(pm: ParallelModel, par: Parallel, batch: int) -> dict[str, Any]:
    r = pm.evaluate(par, [batch])
    return {
        "ep": par.ep,
        "tp": par.tp,
        "dp": pm.gpus // par.tp,
        "shuffle": par.shuffle,
        "overlap": par.overlap,
        "tokens_per_s": float(r.tokens_per_s[0]),
        "iteration_ms": float(r.iteration_s[0] * 1e3),
        "a2a_ms_per_layer": float(r.a2a_s_per_layer[0] * 1e3),
        "a2a_mb_per_layer": float(r.a2a_bytes_per_layer[0] / 1e6),
        "gpu_memory_gb": float(r.gpu_memory_bytes[0] / 1e9),
        "fits": bool(r.fits[0]),
        "feasible": bool(r.feasible[0]),
        "resident_experts_per_gpu_layer": int(r.resident_per_gpu_layer[0]),
    }


def plan_parallel(
    model,
    system,
    workload,
    accuracy: float = 0.0,
    colocation: float | None = None,
    overlap: bool = False,
) -> dict[str, Any]:
    """The best (ep, tp, shuffle) for `workload.batch` on `system`, and every candidate."""
    if not 0.0 <= accuracy <= 1.0:
        raise SpecMoEError(f"accuracy={accuracy}: allowed [0, 1]")
    pm = ParallelModel(model, system, workload)
    rows = [
        _row(pm, p, workload.batch)
        for p in candidates(model, pm.gpus, accuracy, colocation, overlap)
    ]
    rows.sort(key=lambda r: -r["tokens_per_s"])
    fitting = [r for r in rows if r["fits"]] or [r for r in rows if r["feasible"]]
    if not fitting:
        raise SpecMoEError(
            f"model {model.name} does not fit on {system.name} "
            f"({pm.gpus} GPUs) even with experts offloaded: add GPUs"
        )
    best = fitting[0]
    no_shuffle = [r for r in fitting if not r["shuffle"]]
    gain = best["tokens_per_s"] / no_shuffle[0]["tokens_per_s"] if no_shuffle else float("nan")
    return {
        "model": model.name,
        "hardware": system.name,
        "gpus": pm.gpus,
        "batch": workload.batch,
        "accuracy": accuracy,
        "colocation": colocation,
        "best": best,
        "offloaded": not best["fits"],
        "shuffle_gain": None if np.isnan(gain) else gain,
        "candidates": rows,
        "calibration": "uncalibrated: datasheet link bandwidths, assumed latencies",
    }
