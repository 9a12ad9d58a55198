"""Serving capacity of one replica: requests per second at a concurrency (batch), and offered load.

One rule for the serving simulator's overload flag and the service-level planner's GPU count:
at full concurrency B a replica decodes `tokens_per_s` (steady state, speculation included) and
prefills its prompts B at a time (`prefill_s` = one prefill pass over B prompts), so a request
costs (output_len − 1) / tokens_per_s of decode time (the first token comes from the prefill) and
prefill_s / B of prefill time:

    requests_per_s = 1 / ((output_len − 1) / tokens_per_s + prefill_s / B)

Prefill batched B at a time is the cheapest a continuous-batching server can do, so this is an
upper bound on what a replica sustains: demand above it is overload for certain.

The same accounting gives the time per output token a request sees under continuous batching
(prefill not chunked): over its life every other slot turns over once, so decoding is stalled by
at least one full-batch prefill per request lifetime:

    serving TPOT = decode TPOT + prefill_s / (output_len − 1)
"""
from __future__ import annotations

import numpy as np

from specmoe.errors import SpecMoEError


def requests_per_s(tokens_per_s, prefill_s, batch, output_len: int):
    """Requests/s one replica completes at concurrency `batch` (numpy arrays broadcast)."""
    if output_len < 1:
        raise SpecMoEError(f"output_len={output_len}: must be >= 1")
    tps = np.asarray(tokens_per_s, dtype=float)
    if np.any(tps <= 0):
        raise SpecMoEError("tokens_per_s: must be > 0 to give a capacity")
    per_request_s = (output_len - 1) / tps + np.asarray(prefill_s, dtype=float) / np.asarray(
        batch, dtype=float
    )
    return 1.0 / per_request_s


def serving_tpot_ms(tpot_ms, prefill_ms, output_len: int):
    """TPOT under continuous batching: decode TPOT plus one full-batch prefill per request
    lifetime."""
    return np.asarray(tpot_ms, dtype=float) + np.asarray(prefill_ms, dtype=float) / max(
        output_len - 1, 1
    )


def replicas_for(rate_rps: float, per_replica_rps) -> np.ndarray:
    """GPUs (replicas) to serve `rate_rps` requests/s at `per_replica_rps` each: ceil(R / r)."""
    if not rate_rps > 0:
        raise SpecMoEError(f"rate={rate_rps}: must be > 0 requests/s")
    # A hair below the ratio rounds as equal: 2.0000000001 replicas is 2 (float noise), not 3.
    return np.ceil(rate_rps / np.asarray(per_replica_rps, dtype=float) * (1.0 - 1e-12)).astype(int)


def offered_load(rate_rps: float, capacity_rps: float) -> dict[str, float | bool]:
    """Arrival demand against capacity: load ρ = rate / capacity; overloaded when ρ > 1."""
    load = rate_rps / capacity_rps
    return {"rate_rps": float(rate_rps), "capacity_rps": float(capacity_rps), "load": float(load),
            "overloaded": bool(load > 1.0)}
