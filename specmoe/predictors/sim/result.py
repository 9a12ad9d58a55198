"""What a simulation returns: throughput, latency percentiles, bytes per link, utilisation,
trace."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specmoe.errors import SpecMoEError
from specmoe.measure.trace import Header, Trace, to_chrome, write_trace

PERCENTILES = (50, 90, 99)


def percentiles(values) -> dict[str, float | None]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {f"p{q}": None for q in PERCENTILES}
    return {f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES}


@dataclass
class SimResult:
    """One simulated run. Times in the field names' units; breakdown in seconds per iteration."""

    echo: dict[str, Any]
    mode: str                                # offline | serving
    seed: int
    iterations: int                          # decode iterations simulated
    tokens: int                              # output tokens produced by them
    makespan_s: float                        # simulated time the throughput is measured over
    tokens_per_s: float
    tpot_ms: float                           # mean time per output token per sequence
    tpot_ms_percentiles: dict[str, float | None]
    ttft_ms: float | None
    ttft_ms_percentiles: dict[str, float | None]
    iteration_ms: float
    iteration_ms_percentiles: dict[str, float | None]
    tokens_per_iteration: float
    bytes: dict[str, float]                  # per link/device: h2d, d2h, ssd
    h2d_bytes_per_token: float
    h2d_bytes_per_iteration: float
    utilisation: dict[str, float]            # busy time / makespan per resource
    cache_hit_rate: float | None             # needed experts found resident, target passes
    tokens_per_verification: float | None    # accepted drafts + bonus, per sequence
    accepted_per_verification: float | None  # accepted draft tokens, per sequence
    breakdown: dict[str, float]
    gpu_memory_gb: float
    gpu_capacity_gb: float      # usable: HBM × utilisation − CUDA context (costs.memory)
    gpu_hbm_gb: float
    fits: bool
    resident_experts_per_layer: float
    calibrated: bool
    events: int                              # SimPy events processed
    wall_s: float
    requests: dict[str, Any] = field(default_factory=dict)
    # serving: demand vs capacity, overload flag
    load: dict[str, Any] = field(default_factory=dict)
    trace_header: Header | None = None
    trace_events: list[dict] | None = None
    interval: dict[str, Any] = field(default_factory=dict)   # p10/p50/p90 keys and `evidence`

    @property
    def iteration_s(self) -> float:
        return self.iteration_ms / 1e3

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """The keys of `specmoe predict --json` plus the simulator's own; numbers are None when the
        configuration does not fit in GPU memory, as predict does."""
        fit = self.fits
        out = {
            **self.echo,
            "fits": fit,
            "tokens_per_s": self.tokens_per_s if fit else None,
            "tpot_ms": self.tpot_ms if fit else None,
            "ttft_ms": self.ttft_ms if fit else None,
            "iteration_ms": self.iteration_ms,
            "tokens_per_iteration": self.tokens_per_iteration,
            "h2d_bytes_per_token": self.h2d_bytes_per_token,
            "h2d_bytes_per_iteration": self.h2d_bytes_per_iteration,
            "gpu_memory_gb": self.gpu_memory_gb,
            "gpu_capacity_gb": self.gpu_capacity_gb,
            "gpu_hbm_gb": self.gpu_hbm_gb,
            "resident_experts_per_layer": self.resident_experts_per_layer,
            "breakdown": dict(self.breakdown),
            "calibrated": self.calibrated,
            "source": "sim",
            "mode": self.mode,
            "seed": self.seed,
            "iterations": self.iterations,
            "tokens": self.tokens,
            "makespan_s": self.makespan_s,
            "tpot_ms_percentiles": self.tpot_ms_percentiles,
            "ttft_ms_percentiles": self.ttft_ms_percentiles,
            "iteration_ms_percentiles": self.iteration_ms_percentiles,
            "bytes": dict(self.bytes),
            "utilisation": dict(self.utilisation),
            "cache_hit_rate": self.cache_hit_rate,
            "tokens_per_verification": self.tokens_per_verification,
            "accepted_per_verification": self.accepted_per_verification,
            "events": self.events,
            "wall_s": self.wall_s,
            "events_per_s": self.events_per_s,
        }
        out.update({k: (v if fit or k == "evidence" else None) for k, v in self.interval.items()})
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.load:
            out["load"] = dict(self.load)
        if not fit:
            out["reason"] = (
                f"needs {self.gpu_memory_gb:.1f} GB of GPU memory; {self.echo.get('hardware')} "
                f"allows {self.gpu_capacity_gb:.2f} GB of its {self.gpu_hbm_gb:g} GB (utilisation "
                "limit and CUDA context, specmoe.costs.memory)"
            )
        return out

    # ---- trace ----------------------------------------------------------------------------------
    def trace(self) -> Trace:
        if self.trace_events is None:
            raise SpecMoEError("trace: this run recorded none; simulate with trace=True")
        return Trace(header=self.trace_header.to_dict(), events=self.trace_events)

    def write_trace(self, path: str | Path) -> Path:
        t = self.trace()
        return write_trace(path, t.header, t.events)

    def chrome(self) -> dict[str, Any]:
        return to_chrome(self.trace())
