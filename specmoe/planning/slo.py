"""Plan for a service level: the fastest configuration whose TPOT and TTFT meet targets, and GPUs.

    from specmoe.planning.slo import plan_slo
    p = plan_slo(model="mixtral-8x7b", hardware="h100-pcie", tpot_ms=100, ttft_ms=2000, rate=2.0)
    p["best"], p["replicas"], p["confirmation"]

Search: for each policy the analytic model evaluates every batch (concurrency) 1..max_batch,
and for specmoe every γ × N of the planner's grid, in one vectorised call. A configuration meets
the targets when the upper end of its interval (p90, `specmoe.predictors.intervals`; or the
point value with interval="point", and the result says which) of TPOT and of TTFT is at or
below the target. TPOT is the one a request sees under continuous batching: decode time per
token plus the prefills that replace finishing requests (`capacity.serving_tpot_ms`). TTFT is
the prefill of a full batch of prompts (the worst admission; queueing comes on top and is what
the simulator checks). Among those that meet the targets and fit in GPU memory, the best has
the most tokens/s per GPU; with a request rate R, the most requests/s per GPU
(`specmoe.predictors.capacity`: decode plus prefill time per request), and the GPU count is
replicas = ceil(R / requests_per_s per replica).

Confirmation: the serving simulator runs the chosen configuration at R / replicas requests/s per
replica (Poisson arrivals, continuous batching) and checks TPOT and TTFT p90 against the targets;
when they miss, more replicas are tried (at least one more, or enough to bring the measured load
to 0.9), up to `MAX_TRIES` runs; the first `batch` requests warm the caches and are not counted.
When a target is still missed, the search runs again with it lowered by the simulator's gap (up
to `MAX_ROUNDS` searches). Without a rate the simulator runs the choice offline (a full batch in
steady state) and checks its mean serving TPOT and its prefill.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import ANALYTIC, PLANNED, make_policy
from specmoe.inputs.setup import Setup, resolve
from specmoe.planning.search import POLICY_PARAMS, draft_expert_grid
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.capacity import replicas_for, requests_per_s, serving_tpot_ms
from specmoe.predictors.intervals import evaluate_intervals

NOTE_LATENCY = (
    "TPOT includes prefill stalls under continuous batching (at least one full-batch prefill per "
    "request lifetime); TTFT is the prefill of a full batch of prompts; queueing is checked by "
    "the serving simulator"
)
MAX_TRIES = 4                 # serving simulations per confirmation (each adds replicas)
MAX_ROUNDS = 3                # searches, each with targets tightened by what the simulator saw
CONFIRM_REQUESTS = (48, 384)  # serving confirmation: 3 × batch requests, within these bounds
TARGET_LOAD = 0.9             # after a miss, at least enough replicas to bring the load to this


@dataclass
class Grid:
    """One policy's configurations as flat arrays (batch, γ, N) and their predictions."""

    policy: str
    batch: np.ndarray
    gamma: np.ndarray
    draft_experts: np.ndarray
    tokens_per_s: np.ndarray
    tpot_ms: np.ndarray            # decode only (the planner's and predict's TPOT)
    ttft_ms: np.ndarray
    tpot_ms_serving: np.ndarray    # with prefill stalls under continuous batching
    tpot_ms_bound: np.ndarray      # what is compared with the target: p90 (or point) serving TPOT
    ttft_ms_bound: np.ndarray
    requests_per_s: np.ndarray
    fits: np.ndarray


def _intervals():
    """The interval predictor (p10/p50/p90 per configuration; one place to swap it in tests)."""
    return evaluate_intervals


def evaluate_grid(setup: Setup, name: str, batches: np.ndarray, gammas: Iterable[int],
                  ns: Iterable[int], params: dict, bound: str) -> Grid:
    """Every (batch, γ, N) of one policy in one analytic call (γ = N = 0 for a plain policy)."""
    pol = make_policy(name, **params)
    if name == "specmoe":
        b, g, n = (
            a.ravel()
            for a in np.meshgrid(
                batches, np.asarray(list(gammas)), np.asarray(list(ns)), indexing="ij"
            )
        )
    else:
        b, g, n = batches, np.zeros_like(batches), np.zeros_like(batches)
    m, sysm, wl = setup.model, setup.system, setup.workload
    res = Analytic(m, sysm, wl).evaluate(pol, batch=b, gamma=g, draft_experts=n)
    tpot, ttft = np.ravel(res.tpot_ms) * np.ones(b.shape), np.ravel(res.ttft_ms) * np.ones(b.shape)
    tpot_hi, ttft_hi = tpot, ttft
    if bound == "p90":
        iv = _intervals()(m, sysm, wl, pol, batch=b, gamma=g, draft_experts=n)
        tpot_hi, ttft_hi = np.ravel(iv["tpot_ms"][2]), np.ravel(iv["ttft_ms"][2])
    tps = np.ravel(res.tokens_per_s) * np.ones(b.shape)
    rps = requests_per_s(tps, ttft / 1e3, b, wl.output_len)
    out_len = wl.output_len
    return Grid(name, b, g, n, tps, tpot, ttft, serving_tpot_ms(tpot, ttft, out_len),
                serving_tpot_ms(tpot_hi, ttft_hi, out_len), ttft_hi, rps,
                np.ravel(res.fits) * np.ones(b.shape, bool))


def _meets(grid: Grid, tpot_ms: float | None, ttft_ms: float | None) -> np.ndarray:
    ok = grid.fits.copy()
    if tpot_ms is not None:
        ok &= grid.tpot_ms_bound <= tpot_ms
    if ttft_ms is not None:
        ok &= grid.ttft_ms_bound <= ttft_ms
    return ok


def _row(grid: Grid, i: int) -> dict[str, Any]:
    return {
        "policy": grid.policy,
        "batch": int(grid.batch[i]),
        "gamma": int(grid.gamma[i]),
        "draft_experts": int(grid.draft_experts[i]),
        "tokens_per_s": float(grid.tokens_per_s[i]),
        "tpot_ms": float(grid.tpot_ms[i]),
        "ttft_ms": float(grid.ttft_ms[i]),
        "tpot_ms_serving": float(grid.tpot_ms_serving[i]),
        "tpot_ms_bound": float(grid.tpot_ms_bound[i]),
        "ttft_ms_bound": float(grid.ttft_ms_bound[i]),
        "requests_per_s": float(grid.requests_per_s[i]),
    }


def _check_targets(tpot_ms, ttft_ms, rate, max_batch) -> None:
    if tpot_ms is None and ttft_ms is None:
        raise SpecMoEError("tpot_ms, ttft_ms: give at least one latency target (milliseconds)")
    for name, v in (("tpot_ms", tpot_ms), ("ttft_ms", ttft_ms), ("rate", rate)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise SpecMoEError(f"{name}={v}: must be > 0")
    if int(max_batch) < 1:
        raise SpecMoEError(f"max_batch={max_batch}: must be >= 1")


def plan_slo(
    model="mixtral-8x7b",
    hardware="h100-pcie",
    tpot_ms: float | None = None,
    ttft_ms: float | None = None,
    rate: float | None = None,
    policies: Iterable[str] = PLANNED,
    gammas: Iterable[int] = range(17),
    draft_experts: Iterable[int] | None = None,
    max_batch: int = 512,
    confirm: str = "auto",
    interval: str = "auto",
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """The configuration with the highest throughput whose TPOT and TTFT (p90 where intervals
    exist) meet the targets; with `rate` (requests/s) the GPUs needed. kwargs: as `resolve`
    (prompt_len, output_len, acceptance, routing, policy parameters).

    interval: "auto" or "p90" (the interval's upper end) or "point" (the point prediction).
    confirm: "auto" / "sim" (run the serving simulator on the choice) or "analytic" (do not).
    When the simulator misses a target, the search runs again with that target lowered by what the
    simulator saw beyond the analytic bound (up to MAX_ROUNDS searches; `rounds` lists them).
    """
    _check_targets(tpot_ms, ttft_ms, rate, max_batch)
    if confirm not in ("auto", "sim", "analytic"):
        raise SpecMoEError(f"confirm={confirm!r}: allowed auto, sim, analytic")
    bound = _bound(interval)
    params = {
        k: kwargs.pop(k) for k in list(kwargs) if k in POLICY_PARAMS and kwargs[k] is not None
    }
    base = resolve(model=model, hardware=hardware, batch=1, policy="ondemand", **params, **kwargs)
    gs = sorted({int(g) for g in gammas})
    ns = (
        sorted({int(n) for n in draft_experts})
        if draft_experts
        else draft_expert_grid(base.model.num_experts)
    )
    space = Space(base, tuple(policies), np.arange(1, int(max_batch) + 1), gs, ns, params, bound,
                  "requests_per_s" if rate is not None else "tokens_per_s")
    targets = {"tpot_ms": tpot_ms, "ttft_ms": ttft_ms, "rate_rps": rate}
    out = _choose(space, targets, targets)
    if confirm == "analytic":
        return out
    rounds, used = [], dict(targets)
    for _ in range(MAX_ROUNDS):
        out["confirmation"] = confirm_choice(base, out["best"], targets, out["replicas"], seed,
                                             required=confirm == "sim")
        rounds.append(_round(out, used))
        used = _tightened(out, used)
        if out["confirmation"]["meets"] or not out["confirmation"]["ran"] or used is None:
            break
        try:
            nxt = _choose(space, targets, used)
        except SpecMoEError as exc:
            rounds.append({"targets_used": used, "none": str(exc)})
            break
        out = nxt
    out["rounds"] = rounds
    return out


@dataclass(frozen=True)
class Space:
    """What the search covers: the setup, policies, batches, γ and N grids, bound and objective."""

    base: Setup
    policies: tuple[str, ...]
    batches: np.ndarray
    gammas: list[int]
    draft_experts: list[int]
    params: dict
    bound: str
    objective: str


def _choose(space: Space, targets: dict, used: dict) -> dict[str, Any]:
    """The best configuration meeting the `used` targets (the user's, or tightened by the
    simulator)."""
    best, by_policy, searched, feasible = None, {}, 0, 0
    key = space.objective
    for name in space.policies:
        if name not in ANALYTIC:
            raise SpecMoEError(f"policy={name!r}: the service-level search covers {ANALYTIC}")
        grid = evaluate_grid(
            space.base,
            name,
            space.batches,
            space.gammas,
            space.draft_experts,
            space.params,
            space.bound,
        )
        ok = _meets(grid, used["tpot_ms"], used["ttft_ms"])
        searched, feasible = searched + ok.size, feasible + int(ok.sum())
        if ok.any():
            i = int(np.flatnonzero(ok)[np.argmax(getattr(grid, key)[ok])])
            by_policy[name] = _row(grid, i)
            if best is None or by_policy[name][key] > best[key]:
                best = by_policy[name]
    base = space.base
    if best is None:
        raise SpecMoEError(_nothing_meets(base, used, space.bound, int(space.batches[-1])))
    rate = targets["rate_rps"]
    return {
        "model": base.model.name,
        "hardware": base.system.name,
        "targets": targets,
        "targets_used": used,
        "bound": space.bound,
        "objective": key,
        "best": best,
        "best_by_policy": by_policy,
        "searched": searched,
        "feasible": feasible,
        "output_len": base.workload.output_len,
        "acceptance_source": base.workload.acceptance.source,
        "replicas": int(replicas_for(rate, best["requests_per_s"])) if rate is not None else None,
        "notes": [_bound_note(space.bound), NOTE_LATENCY],
    }


def _round(out: dict, used: dict) -> dict[str, Any]:
    b, c = out["best"], out["confirmation"]
    return {
        "targets_used": dict(used),
        "policy": b["policy"],
        "batch": b["batch"],
        "gamma": b["gamma"],
        "draft_experts": b["draft_experts"],
        "replicas": c.get("replicas"),
        "meets": c["meets"],
    }


def _tightened(out: dict, used: dict) -> dict | None:
    """Targets for the next round after the simulator missed: each target the last (least loaded)
    try missed, lowered by what the simulator saw beyond the analytic bound; None when nothing to
    do."""
    c, b = out["confirmation"], out["best"]
    if not c.get("ran") or c["meets"]:
        return None
    last = (
        c["tries"][-1]
        if c["mode"] == "serving"
        else {"tpot_ms_p90": c["tpot_ms"], "ttft_ms_p90": c["ttft_ms"]}
    )
    new = dict(used)
    for key, bound in (("tpot_ms", "tpot_ms_bound"), ("ttft_ms", "ttft_ms_bound")):
        target = out["targets"][key]
        seen = last[f"{key}_p90"]
        if target is not None and seen > target:
            new[key] = min(used[key] - max(seen - b[bound], 0.0), 0.98 * used[key])
            if new[key] <= 0:       # the simulator's gap exceeds the target: no search can close it
                return None
    return new if new != used else None


def _bound(interval: str) -> str:
    if interval not in ("auto", "p90", "point"):
        raise SpecMoEError(f"interval={interval!r}: allowed auto, p90, point")
    return "point" if interval == "point" else "p90"


def _bound_note(bound: str) -> str:
    if bound == "p90":
        return (
            "targets compared with the p90 (upper end) of each configuration's "
            "TPOT and TTFT interval"
        )
    return "targets compared with point predictions (interval='point'): no margin for model error"


def _nothing_meets(base: Setup, targets: dict, bound: str, max_batch: int) -> str:
    return (
        f"no configuration of {base.model.name} on {base.system.name} (batch 1..{max_batch}, "
        f"{bound} values) meets tpot_ms<={targets['tpot_ms']} and ttft_ms<={targets['ttft_ms']}; "
        "relax a target, shorten the prompt, or choose faster hardware"
    )


# ---- confirmation by the serving simulator ---------------------------------------------------

def confirm_choice(base: Setup, best: dict, targets: dict, replicas: int | None, seed: int = 0,
                   required: bool = False) -> dict[str, Any]:
    """Simulate the chosen configuration (serving at the per-replica rate, else offline)."""
    try:
        from specmoe.predictors.sim import Simulator
        from specmoe.predictors.sim.simulator import Serving
    except ImportError as exc:
        if required:
            raise SpecMoEError(f"confirm='sim': simulator not importable ({exc})") from exc
        return {"ran": False, "why": f"simulator not importable ({exc})"}
    s = resolve(model=base.model, hardware=base.system, policy=base.policy.with_(
        name=best["policy"], gamma=best["gamma"], draft_experts=best["draft_experts"]),
        batch=best["batch"], acceptance=base.workload.acceptance, routing=base.workload.routing,
        prompt_len=base.workload.prompt_len, output_len=base.workload.output_len)
    if targets["rate_rps"] is None:
        sim = Simulator(s, iterations=40, seed=seed)
        tps, warm_prefill_s = sim.steady_state()
        ttft = sim.ttft[0] * 1e3
        tpot = float(
            serving_tpot_ms(best["batch"] / tps * 1e3, warm_prefill_s * 1e3, s.workload.output_len)
        )
        return {
            "ran": True,
            "mode": "offline",
            "tpot_ms": tpot,
            "ttft_ms": ttft,
            "tokens_per_s": tps,
            "meets": _ok(tpot, ttft, targets),
            "compared": "simulated mean TPOT of a full batch with one warm full-batch prefill per "
                        "request lifetime, and the (cold) prefill of a full batch",
        }
    n = int(np.clip(3 * best["batch"], *CONFIRM_REQUESTS))
    warmup = min(best["batch"], n // 3)
    tries, k = [], replicas
    for _ in range(MAX_TRIES):
        per = targets["rate_rps"] / k
        r = Simulator(s, seed=seed, serving=Serving(rate=per, requests=n, warmup=warmup)).run()
        tpot, ttft = r.tpot_ms_percentiles["p90"], r.ttft_ms_percentiles["p90"]
        load = r.load.get("load")
        tries.append(
            {
                "replicas": k,
                "rate_per_replica_rps": per,
                "tpot_ms_p90": tpot,
                "ttft_ms_p90": ttft,
                "load": load,
                "meets": _ok(tpot, ttft, targets),
            }
        )
        if tries[-1]["meets"]:
            break
        k = max(k + 1, int(np.ceil(k * load / TARGET_LOAD)) if load else k + 1)
    last = tries[-1]
    return {
        "ran": True,
        "mode": "serving",
        "requests": n,
        "warmup": warmup,
        "tries": tries,
        "meets": last["meets"],
        "replicas": last["replicas"] if last["meets"] else None,
        "compared": "simulated per-request TPOT p90 and TTFT p90 (queueing included)",
    }


def _ok(tpot, ttft, targets) -> bool:
    return bool((targets["tpot_ms"] is None or tpot <= targets["tpot_ms"])
                and (targets["ttft_ms"] is None or ttft <= targets["ttft_ms"]))
