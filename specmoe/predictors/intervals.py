"""Prediction intervals: p10/p50/p90 of tokens/s, TPOT and TTFT from what the model does not know.

Uncertain inputs: every cost parameter with a spread (specmoe.costs.evidence: calibrated hold-out
error, published measurements' range, stated priors) and the acceptance rate α (its spread,
`Acceptance.alpha_spread`). They are sampled on a fixed Latin hypercube of DRAWS points (each
input's marginal is exactly its quantiles at (i + ½)/DRAWS, inputs independent): log-normal
parameters value·exp(spread·z), efficiencies kept at or below their physical peak, α + spread·z
clipped to [0, ALPHA_MAX]. The analytic model evaluates all draws × configurations in one call
over broadcast arrays (parameters shaped [DRAWS, 1]), and each output's quantiles over the draws
use the same (i + ½)/DRAWS positions (numpy's "hazen"), so a single monotone input gives its own
quantiles back exactly: with DRAWS = 25, p10, p50 and p90 are draws 3, 13 and 23.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np
from scipy.stats import norm

from specmoe.costs.evidence import Evidence, evidence_for, tables_for, tables_summary
from specmoe.costs.ops import GEOMETRY, PARAM_NAMES, CostParams, params_for, prediction_costs
from specmoe.predictors.analytic import Analytic, AnalyticResult

DRAWS = 25            # (i + ½)/25 puts p10, p50 and p90 exactly on draws 2, 12 and 22
QUANTILES = (0.1, 0.5, 0.9)
OUTPUTS = ("tokens_per_s", "tpot_ms", "ttft_ms")
ALPHA_MAX = 0.995
SEED = 20261202       # fixed: the same configuration always gets the same interval


@cache
def normal_scores(n_inputs: int, draws: int = DRAWS, seed: int = SEED) -> np.ndarray:
    """[draws, n_inputs] standard-normal scores: each column a permutation of Φ⁻¹((i + ½)/draws)."""
    base = norm.ppf((np.arange(draws) + 0.5) / draws)
    rng = np.random.default_rng(seed)
    cols = [base[rng.permutation(draws)] for _ in range(n_inputs)]
    out = np.stack(cols, axis=1) if cols else np.zeros((draws, 0))
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Draws:
    """Sampled inputs: cost parameters as [DRAWS, 1] arrays and α offsets [DRAWS, 1]."""

    params: CostParams
    alpha_z: np.ndarray          # standard-normal score per draw for α
    uncertain: tuple[str, ...]   # parameters that vary (spread > 0)
    time_factor: np.ndarray      # [DRAWS, 1] multiplier of iteration time: unexplained model error


def draws_for(system, alpha_spread: float = 0.0, draws: int = DRAWS) -> Draws:
    """The fixed draws of a system's cost parameters (and α's score) around the evidence."""
    base = params_for(system)
    ev: Evidence = evidence_for(system) if not getattr(system, "ideal", False) else Evidence()
    uncertain = tuple(
        k for k in PARAM_NAMES
        if ev.spreads.get(k, 0.0) > 0 and getattr(base, k) is not None and k not in GEOMETRY
    )   # kernel geometry (tile sizes) is a fixed property of the kernels, never drawn
    z = normal_scores(len(uncertain) + 2, draws)
    changes: dict[str, Any] = {}
    for j, k in enumerate(uncertain):
        v = float(getattr(base, k))
        x = v * np.exp(ev.spreads[k] * z[:, j])
        # no efficiency above the physical peak (or above a fitted value > 1)
        if k.endswith("_eff"):
            x = np.minimum(x, max(1.0, v))
        changes[k] = x[:, None]
    factor = np.exp(ev.model_error * z[:, -2])[:, None]
    return Draws(replace(base, **changes), z[:, -1][:, None], uncertain, factor)


def alpha_draws(alpha, alpha_spread, z) -> np.ndarray:
    """α per draw and configuration: α + spread·z, clipped to [0, ALPHA_MAX]."""
    a = np.asarray(alpha, dtype=float)
    s = np.asarray(alpha_spread, dtype=float)
    if not np.any(s > 0):
        return np.broadcast_to(a, np.broadcast_shapes(a.shape, np.shape(z)))
    return np.clip(a + s * z, 0.0, np.maximum(ALPHA_MAX, a))


def quantiles(samples: np.ndarray) -> np.ndarray:
    """[3, ...] p10/p50/p90 over the draws axis (0), at the draws' own plotting positions."""
    return np.quantile(samples, QUANTILES, axis=0, method="hazen")


def evaluate_intervals(model, system, workload, policy, batch=None, gamma=None, draft_experts=None,
                       alpha=None, alpha_spread=None, draws: int = DRAWS) -> dict[str, np.ndarray]:
    """{output: [3, n] p10/p50/p90} for configurations given as arrays (as Analytic.evaluate takes).

    alpha: α per configuration (default: the workload's α(N)); alpha_spread: its standard
    deviation (default: the workload's acceptance spread). Non-speculative configurations ignore α.
    """
    acc = workload.acceptance
    d = draws_for(system, draws=draws)
    n = policy.draft_experts if draft_experts is None else draft_experts
    a = acc.alpha_for(n) if alpha is None else np.asarray(alpha, dtype=float)
    spread = acc.alpha_spread if alpha_spread is None else alpha_spread
    a_draws = alpha_draws(np.ravel(a)[None, :] if np.ndim(a) else a, spread, d.alpha_z)
    if alpha is None and acc.tau_table and not spread:   # a measured τ table: let it decide τ(γ)
        a_draws = None
    an = Analytic(model, system, workload, costs=prediction_costs(model, system, d.params))
    shape = lambda x: None if x is None else np.ravel(np.asarray(x, dtype=float))[None, :]  # noqa: E731
    res: AnalyticResult = an.evaluate(policy, batch=shape(batch), gamma=shape(gamma),
                                      draft_experts=shape(draft_experts), alpha=a_draws)
    out = {}
    for k in OUTPUTS:
        v = getattr(res, k)
        v = v / d.time_factor if k == "tokens_per_s" else v * d.time_factor
        out[k] = quantiles(np.broadcast_to(v, np.broadcast_shapes(np.shape(v), (draws, 1))))
    return out


def interval_block(iv: dict[str, np.ndarray], i: int = 0) -> dict[str, float]:
    """Flat {tokens_per_s_p10: …, …} for configuration i of `evaluate_intervals`' result."""
    out = {}
    for k, q in iv.items():
        col = np.asarray(q).reshape(3, -1)[:, i]
        for name, v in zip(("p10", "p50", "p90"), col, strict=True):
            out[f"{k}_{name}"] = float(v)
    return out


def overlap(a: dict[str, float], b: dict[str, float], key: str = "tokens_per_s") -> bool:
    """True when two configurations' p10–p90 bands of `key` overlap (too close to call)."""
    return a[f"{key}_p10"] <= b[f"{key}_p90"] and b[f"{key}_p10"] <= a[f"{key}_p90"]


def provenance(system, acceptance) -> dict[str, Any]:
    """Where the numbers come from: GPU parameters, every uncertain input, α and its source."""
    ev = (
        evidence_for(system)
        if not getattr(system, "ideal", False)
        else Evidence(gpu="ideal (--ideal)")
    )
    return {"ideal": bool(getattr(system, "ideal", False)), "gpu_parameters": ev.gpu,
            "calibrated": ev.calibrated, "alpha_source": acceptance.source,
            "alpha_spread": acceptance.alpha_spread,
            "spreads": {k: ev.spreads[k] for k in sorted(ev.spreads) if ev.spreads[k] > 0},
            "model_error": ev.model_error, "model_error_source": ev.model_error_source,
            "interval": f"p10/p50/p90 over {DRAWS} Latin-hypercube draws of the stated spreads",
            "measured_tables": tables_summary(tables_for(system), system)}
