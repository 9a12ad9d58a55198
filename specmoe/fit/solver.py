"""Least squares within physical bounds, k-fold hold-out by shape, and which parameters the data
cannot identify."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import least_squares

from specmoe.costs.ops import PARAM_NAMES, CostParams
from specmoe.errors import SpecMoEError
from specmoe.fit.op_map import E2E_PARAMS, OP_PARAMS

# Bounds: an efficiency above 1 means the op beat the base profile's peak (e.g. weights that stay
# in a cache faster than the memory the profile names); fixed times in µs.
# GPU efficiencies are fractions of the datasheet peak: at most 1 (a working set served from L2
# has its own term, l2_bw_factor, the L2 bandwidth as a multiple of the HBM peak: published L2
# bandwidths are 2-4x HBM on A100/H100; bounded by 8). The host-memcpy "link" of the CPU profile
# and the CPU's own efficiencies keep a wider bound: their peaks are measured, not datasheet.
BOUNDS = {
    "gemm_compute_eff": (1e-3, 1.0), "gemm_half_tokens": (0.0, 1e4), "hbm_eff": (1e-3, 1.0),
    "attn_eff": (1e-3, 1.0), "kernel_overhead_us": (0.0, 1e5), "layer_overhead_us": (0.0, 1e6),
    "moe_compute_eff": (1e-3, 1.0), "moe_half_tokens": (0.0, 1e4), "moe_hbm_eff": (1e-3, 1.0),
    "moe_kernel_us": (0.0, 1e4), "moe_reread": (0.0, 1.0), "attn_fixed_us": (0.0, 1e4),
    "attn_item_us": (0.0, 1e3), "prefill_compute_eff": (1e-3, 1.0), "prefill_item_us": (0.0, 1e3),
    "prefill_half_head_dim": (0.0, 2048.0), "prefill_fixed_us": (0.0, 1e4),
    "l2_bw_factor": (1.0, 8.0),
    "gemm_tile_half": (0.0, 1024.0),   # a tile size (rows, columns): up to 4x the largest tile
    "split_k_us": (0.0, 100.0),
    "sm_bw_share": (1.0, 64.0),        # an SM drawing 1-64x its fair share of HBM
    "expert_overhead_us": (0.0, 1e5),
    "link_eff": (1e-3, 4.0), "pageable_eff": (1e-3, 1.0), "transfer_setup_us": (0.0, 1e5),
    "cpu_compute_eff": (1e-3, 4.0), "cpu_mem_eff": (1e-3, 4.0), "cpu_overhead_us": (0.0, 1e5),
}
# Starting points; a second start from the other side of the compute/memory corner guards
# against the kink of the roofline's max().
STARTS = (
    {
        "gemm_compute_eff": 0.5,
        "gemm_half_tokens": 8.0,
        "hbm_eff": 0.5,
        "attn_eff": 0.5,
        "kernel_overhead_us": 5.0,
        "expert_overhead_us": 5.0,
        "layer_overhead_us": 10.0,
        "link_eff": 0.7,
        "pageable_eff": 0.5,
        "transfer_setup_us": 5.0,
        "cpu_compute_eff": 0.5,
        "cpu_mem_eff": 0.5,
        "cpu_overhead_us": 5.0,
        "moe_compute_eff": 0.5,
        "moe_half_tokens": 8.0,
        "moe_hbm_eff": 0.5,
        "moe_kernel_us": 5.0,
        "moe_reread": 0.1,
        "attn_fixed_us": 5.0,
        "attn_item_us": 1.0,
        "prefill_compute_eff": 0.5,
        "prefill_item_us": 1.0,
        "prefill_half_head_dim": 32.0,
        "prefill_fixed_us": 5.0,
        "l2_bw_factor": 2.0,
        "gemm_tile_half": 16.0,
        "split_k_us": 1.0,
        "sm_bw_share": 4.0,
    },
    {
        "gemm_compute_eff": 0.1,
        "gemm_half_tokens": 64.0,
        "hbm_eff": 1.0,
        "attn_eff": 1.0,
        "kernel_overhead_us": 50.0,
        "expert_overhead_us": 50.0,
        "layer_overhead_us": 100.0,
        "link_eff": 0.3,
        "pageable_eff": 0.9,
        "transfer_setup_us": 20.0,
        "cpu_compute_eff": 0.1,
        "cpu_mem_eff": 1.0,
        "cpu_overhead_us": 50.0,
        "moe_compute_eff": 0.1,
        "moe_half_tokens": 64.0,
        "moe_hbm_eff": 0.9,
        "moe_kernel_us": 20.0,
        "moe_reread": 0.5,
        "attn_fixed_us": 20.0,
        "attn_item_us": 5.0,
        "prefill_compute_eff": 0.2,
        "prefill_item_us": 5.0,
        "prefill_half_head_dim": 128.0,
        "prefill_fixed_us": 20.0,
        "l2_bw_factor": 4.0,
        "gemm_tile_half": 64.0,
        "split_k_us": 5.0,
        "sm_bw_share": 16.0,
    },
)



@dataclass
class Fit:
    names: list[str]
    values: np.ndarray
    stderr: np.ndarray
    at_bound: list[bool]
    rms_rel: float
    nfev: int
    message: str
    degenerate: list[str] = field(default_factory=list)  # only a combination of these is determined


def _check_enough(cats: Sequence[str], names: Sequence[str], what: str,
                  pmap: dict | None = None) -> None:
    """Each parameter needs more points than unknowns among the ops that inform it."""

    pmap = pmap or OP_PARAMS
    count = Counter(cats)
    for name in names:
        informing = [c for c in count if name in pmap.get(c, E2E_PARAMS)]
        n_points = sum(count[c] for c in informing)
        unknowns = len({q for c in informing for q in pmap.get(c, E2E_PARAMS)} & set(names))
        need = unknowns + 2
        if n_points < need:
            raise SpecMoEError(
                f"{what}: too few points for parameter {name!r}: {n_points} distinct "
                f"configurations of {sorted(informing)} for {unknowns} parameters; need at least "
                f"{need} (add sizes/shapes to the microbenchmarks)")


@dataclass(frozen=True)
class FitOptions:
    """How to fit. `fix` holds parameters at a value (None: the base profile's) instead of fitting
    them, e.g. a per-copy setup time that copies of a single size cannot separate from bandwidth."""

    folds: int = 5
    loss: str = "soft_l1"     # robust: one configuration hit by a descheduled thread does not rule
    f_scale: float = 0.1      # residuals beyond 10% count linearly, not squared
    min_samples: int = 1
    # Which quantile of the repeats a point's time is: the median, or a low one on a machine shared
    # with other work, where interference only ever adds time (the fastest repeats are the device's)
    quantile: float = 0.5
    # Whose op events fit stage 1: every trace's, or only the microbenchmarks' / the runs'
    op_traces: str = "all"
    fix: tuple[tuple[str, float | None], ...] = ()
    max_nfev: int | None = None
    # "shared": one efficiency group for every weight GEMM (the engine's CPU traces); "per-class":
    # dense GEMM, grouped MoE, decode and prefill attention each their own (GPU kernel tables)
    groups: str = "shared"

    def __post_init__(self):
        if self.folds < 2:
            raise SpecMoEError(f"folds={self.folds}: need at least 2 for a hold-out")
        if self.op_traces not in ("all", "microbenchmark", "end-to-end"):
            raise SpecMoEError(
                f"op_traces={self.op_traces!r}: allowed all, microbenchmark, end-to-end"
            )
        if self.groups not in ("shared", "per-class"):
            raise SpecMoEError(f"groups={self.groups!r}: allowed shared, per-class")
        if not 0.0 <= self.quantile <= 1.0:
            raise SpecMoEError(f"quantile={self.quantile}: allowed [0, 1]")
        bad = [n for n, _ in self.fix if n not in PARAM_NAMES]
        if bad:
            raise SpecMoEError(f"fix: unknown parameter(s) {bad}; allowed {PARAM_NAMES}")


def least_squares_fit(predict: Callable[[CostParams], np.ndarray], measured: np.ndarray,
                      names: list[str], base: CostParams, what: str, opts: FitOptions) -> Fit:
    """Relative-residual least squares within BOUNDS, best of STARTS;
    raises if it does not converge."""

    lo = np.array([BOUNDS[n][0] for n in names])
    hi = np.array([BOUNDS[n][1] for n in names])

    def resid(x):
        pred = predict(replace(base, **dict(zip(names, map(float, x)))))
        return (pred - measured) / measured

    best = None
    for start in STARTS:
        x0 = np.clip([start[n] for n in names], lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        with np.errstate(all="ignore"):
            res = least_squares(
                resid,
                x0,
                bounds=(lo, hi),
                x_scale="jac",
                loss=opts.loss,
                f_scale=opts.f_scale,
                max_nfev=opts.max_nfev or 200 * (len(names) + 1),
            )
        if res.status <= 0 or not np.all(np.isfinite(res.fun)):
            raise SpecMoEError(f"{what}: the fit of {names} did not converge ({res.message}; "
                               f"status {res.status} after {res.nfev} evaluations)")
        if best is None or res.cost < best.cost:
            best = res
    m, n = len(measured), len(names)
    # Approximate 1σ from the Gauss-Newton Hessian (scipy scales jac for robust losses); a
    # direction the data cannot see (a near-zero singular value of the Jacobian, columns scaled
    # to the parameters' sizes) makes its parameters degenerate: their 1σ is infinite.
    s2 = 2 * best.cost / max(m - n, 1)
    cov = np.linalg.pinv(best.jac.T @ best.jac) * s2
    stderr = np.sqrt(np.clip(np.diag(cov), 0, None))
    scale = np.maximum(np.abs(best.x), [0.01 if BOUNDS[q][1] <= 10 else 1.0 for q in names])
    _, sv, vt = np.linalg.svd(best.jac * scale, full_matrices=False)
    null = vt[sv < 1e-6 * max(sv.max(), 1e-300)]
    degenerate = sorted({names[j] for v in null for j in np.flatnonzero(np.abs(v) > 0.1)},
                        key=names.index)
    stderr[[names.index(q) for q in degenerate]] = np.inf
    at = [bool(np.isclose(v, a, rtol=1e-6, atol=1e-9) or np.isclose(v, b, rtol=1e-6, atol=1e-9))
          for v, a, b in zip(best.x, lo, hi)]
    return Fit(list(names), best.x, stderr, at, float(np.sqrt(np.mean(best.fun ** 2))),
               int(best.nfev), str(best.message), degenerate)


def folds_by_shape(cats: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold of each point: within each op,
    distinct configurations dealt round-robin after a shuffle,
    so every fold holds out whole configurations of every op."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(cats), dtype=int)
    for cat in sorted(set(cats)):
        idx = np.flatnonzero(np.asarray(cats) == cat)
        rng.shuffle(idx)
        out[idx] = (np.arange(len(idx)) + rng.integers(k)) % k
    return out


@dataclass
class Stage:
    """One stage's fit and its hold-out predictions (per point)."""

    fit: Fit
    labels: list[str]
    cats: list[str]
    measured: np.ndarray
    predicted: np.ndarray     # full fit, in sample
    holdout: np.ndarray       # each point predicted by the fit of the folds that left it out
    spread: np.ndarray
    folds: int
    unidentified: list[str] = field(default_factory=list)

    def mape(self, which: str = "holdout") -> dict[str, dict[str, float]]:
        pred = self.holdout if which == "holdout" else self.predicted
        err = np.abs(pred - self.measured) / self.measured
        out = {}
        for cat in sorted(set(self.cats)):
            sel = np.asarray(self.cats) == cat
            out[cat] = {
                "mape": float(np.mean(err[sel])),
                "max": float(np.max(err[sel])),
                "points": int(sel.sum()),
                "noise": float(np.nanmedian(self.spread[sel]))
                if np.any(np.isfinite(self.spread[sel]))
                else None,
            }
        return out


def fit_stage(predict: Callable[[CostParams], np.ndarray], measured: np.ndarray, cats: list[str],
              labels: list[str], spread: np.ndarray, names: list[str], base: CostParams,
              opts: FitOptions, what: str, pmap: dict | None = None) -> Stage:
    _check_enough(cats, names, what, pmap)
    full = least_squares_fit(predict, measured, names, base, what, opts)
    dead = unidentified(predict, full, base)
    if dead:  # keep the base value of what the data cannot see, fit the rest again
        names = [n for n in names if n not in dead]
        full = least_squares_fit(predict, measured, names, base, what, opts)
    params = replace(base, **dict(zip(names, map(float, full.values))))
    predicted = predict(params)
    holdout = np.full(len(measured), np.nan)
    k = min(opts.folds, len(measured))
    assign = folds_by_shape(cats, k)
    for f in range(k):
        test = assign == f
        if not test.any():
            continue
        train = ~test

        def sub(p, train=train):
            return predict(p)[train]

        fit = least_squares_fit(
            sub, measured[train], names, base, f"{what} (hold-out fold {f + 1}/{k})", opts
        )
        holdout[test] = predict(replace(base, **dict(zip(names, map(float, fit.values)))))[test]
    return Stage(full, labels, cats, measured, predicted, holdout, spread, k, dead)


def unidentified(predict: Callable[[CostParams], np.ndarray], fit: Fit, base: CostParams,
                 threshold: float = 1e-3) -> list[str]:
    """Parameters whose 10% change (or 1 unit from 0) moves no prediction by `threshold` relative:
    e.g. a compute efficiency when every point is memory-bound. Their fitted value means nothing."""
    x = dict(zip(fit.names, map(float, fit.values)))
    ref = predict(replace(base, **x))
    dead = []
    for n, v in x.items():
        lo, hi = BOUNDS[n]
        step = max(0.1 * abs(v), 1.0 if hi > 10 else 0.01)
        moved = min(v + step, hi) if v + step <= hi else max(v - step, lo)
        change = np.abs(predict(replace(base, **{**x, n: moved})) / ref - 1.0)
        if np.max(change) < threshold:
            dead.append(n)
    return dead
