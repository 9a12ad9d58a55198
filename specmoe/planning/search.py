"""Choose how to serve: policy, draft length γ (0 = speculation off) and draft experts N.

    from specmoe.planning.search import plan, GammaController
    p = plan(model="mixtral-8x7b", hardware="h100-pcie", batch=64)
    p["best"], p["explanation"]["summary"]

Search: the analytic model evaluates every policy over γ × N in one vectorised call per policy
(N on a doubling grid, then every integer N between the best one's neighbours). Confirmation:
where the simulator (`specmoe.predictors.sim`) is importable, the top candidates are simulated and
the simulator's throughput decides; otherwise the choice is analytic and the result says so.
Explanation (`specmoe.planning.explain`): where the iteration's time goes, and what limits it,
measured as the speed-up the chosen configuration would get from 2× PCIe, 2× HBM bandwidth, 2×
compute or half the rejections ("balanced" when none gains much).

`GammaController` is the online form for an engine's `--gamma auto`: it starts at the planner's γ
and re-plans as measured acceptance comes in (`observe(accepted, drafted)` → γ).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np

from specmoe.costs.evidence import evidence_for
from specmoe.costs.ops import CostParams, params_for, prediction_costs
from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import ANALYTIC, PARAMS, PLANNED, SPECULATIVE, Policy, make_policy
from specmoe.inputs.setup import Setup, resolve
from specmoe.inputs.workload import Workload
from specmoe.planning.explain import explain_choice
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.intervals import overlap
from specmoe.predictors.prediction import intervals_for, summarize
from specmoe.predictors.rounds import expected_rounds

# Registry parameters the planner passes through unchanged (it searches γ and N itself).
POLICY_PARAMS = tuple(k for k in PARAMS if k not in ("gamma", "draft_experts"))
INTERVAL_KEYS = tuple(
    f"{k}_{q}" for k in ("tokens_per_s", "tpot_ms", "ttft_ms") for q in ("p10", "p50", "p90")
)
BEST_KEYS = ("policy", "gamma", "draft_experts", "tokens_per_s", "tpot_ms", "h2d_bytes_per_token",
             "gpu_memory_gb", "alpha", "iteration_ms", "tokens_per_iteration", *INTERVAL_KEYS)
SIM_MODES = ("auto", "sim", "analytic")


# ---- candidate search ------------------------------------------------------------------------

def draft_expert_grid(num_experts: int) -> list[int]:
    """N = 1, 2, 4, … below E, and E itself (coarse grid; refined around the best)."""
    out, n = [], 1
    while n < num_experts:
        out.append(n)
        n *= 2
    return [*out, num_experts]


def _evaluate(
    setup: Setup, policy: Policy, gammas: np.ndarray, ns: np.ndarray
) -> list[dict[str, Any]]:
    """Candidates of one policy over paired arrays γ, N (one vectorised analytic call)."""
    res = Analytic(setup.model, setup.system, setup.workload).evaluate(
        policy, gamma=gammas, draft_experts=ns
    )
    iv = intervals_for(Setup(setup.model, setup.system, setup.workload, policy), gammas, ns)
    out = []
    for i in range(len(gammas)):
        s = Setup(setup.model, setup.system, setup.workload,
                  policy.with_(gamma=int(gammas[i]), draft_experts=int(ns[i])))
        c = summarize(s, res, i, iv)
        c["alpha"] = setup.workload.acceptance.alpha_at(int(gammas[i]), int(ns[i]))
        out.append(c)
    return out


def _spec_grid(gammas: Sequence[int], ns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    g, n = np.meshgrid(np.asarray(gammas, dtype=int), np.asarray(ns, dtype=int), indexing="ij")
    return g.ravel(), n.ravel()


def _policy_candidates(
    setup: Setup, name: str, gammas, ns, refine: bool, params: dict
) -> list[dict]:
    pol = make_policy(name, **params)
    if name in SPECULATIVE and name != "specmoe":     # a separate draft model: γ only, no N
        g = np.asarray(gammas, dtype=int)
        return _evaluate(setup, pol, g, np.zeros_like(g))
    if name != "specmoe":
        return _evaluate(setup, pol, np.zeros(1, dtype=int), np.zeros(1, dtype=int))
    g, n = _spec_grid(gammas, ns)
    cands = _evaluate(setup, pol, g, n)
    fitting = [c for c in cands if c["fits"]]
    if not (refine and fitting):
        return cands
    # Every integer N between the best coarse N's neighbours: the coarse grid doubles.
    best_n = max(fitting, key=lambda c: c["tokens_per_s"])["draft_experts"]
    i = list(ns).index(best_n)
    lo, hi = ns[max(i - 1, 0)], ns[min(i + 1, len(ns) - 1)]
    # At most 8 more N, geometrically spaced, so a 128-expert model does not add 100 N values.
    extra = sorted({round(x) for x in np.geomspace(lo, hi, 10)} - {*ns, lo, hi})
    if extra:   # every γ, 0 included, so each N's curve starts where the coarse ones do
        g2, n2 = _spec_grid(gammas, extra)
        cands += _evaluate(setup, pol, g2, n2)
    return cands


def search(setup: Setup, policies: Iterable[str] = PLANNED, gammas: Iterable[int] = range(17),
           draft_experts: Iterable[int] | None = None, refine: bool = True,
           policy_params: dict | None = None) -> list[dict[str, Any]]:
    """Every analytic candidate (dicts as `predict` returns) for the setup's model, system,
    workload."""
    gammas = sorted({int(g) for g in gammas})
    if not gammas:
        raise SpecMoEError("gammas: give at least one draft length (0 = no speculation)")
    E = setup.model.num_experts
    ns = sorted({int(n) for n in draft_experts}) if draft_experts else draft_expert_grid(E)
    bad = [n for n in ns if not 1 <= n <= E]
    if bad:
        raise SpecMoEError(
            f"draft_experts={bad[0]}: allowed 1..{E} (experts per layer of {setup.model.name})"
        )
    out = []
    for name in policies:
        if name not in ANALYTIC:
            raise SpecMoEError(f"policy={name!r}: the planner searches {ANALYTIC} analytically")
        out += _policy_candidates(
            setup, name, gammas, ns, refine and not draft_experts, policy_params or {}
        )
    return out


# ---- simulator confirmation ------------------------------------------------------------------

def simulator():
    """(run, "") where `run(setup, **options)` simulates a resolved Setup, or (None, why) when
    absent."""
    try:
        from specmoe.predictors.sim import Simulator
    except ImportError as exc:
        return None, f"simulator not importable ({exc})"

    def run(setup: Setup, iterations: int = 60, seed: int = 0, **options: Any):
        return Simulator(setup, iterations=iterations, seed=seed, **options).run()

    return run, ""


def simulate_candidate(run, setup: Setup, candidate: dict, **sim_kw) -> dict[str, Any]:
    """Simulate one candidate (a dict from `search`) with the setup's workload and policy
    parameters."""
    s = Setup(setup.model, setup.system, setup.workload,
              setup.policy.with_(name=candidate["policy"], gamma=candidate["gamma"],
                                 draft_experts=candidate["draft_experts"]))
    r = run(s, **sim_kw)
    return r.to_dict() if hasattr(r, "to_dict") else dict(r)


SIM_EVENTS = 150_000   # simulator events per confirmed candidate (~1 s); sets its iteration count


def sim_iterations(setup: Setup, candidate: dict, lo: int = 10, hi: int = 60) -> int:
    """Iterations to simulate: about SIM_EVENTS events (≈ 4 per expert fetch and per layer pass)."""
    m = setup.model
    fetched = candidate["h2d_bytes_per_iteration"] / m.expert_bytes
    per_iter = 4.0 * (fetched + m.num_layers * (candidate["gamma"] + 1))
    return int(np.clip(SIM_EVENTS / max(per_iter, 1.0), lo, hi))


def _confirm(
    setup: Setup, fitting: list[dict], top: int, mode: str, sim_kw: dict
) -> tuple[str, list[str]]:
    """Simulate the best `top` candidates and the best of each policy; mark them with sim
    numbers."""
    if mode == "analytic":
        return "analytic", ["analytic only (confirmation by the simulator not asked for)"]
    fn, why = simulator()
    if fn is None:
        if mode == "sim":
            raise SpecMoEError(f"confirm='sim': {why}")
        return "analytic", [f"analytic only: {why}"]
    ranked = sorted(fitting, key=lambda c: -c["tokens_per_s"])
    chosen, seen = ranked[:top], set()
    for c in ranked:
        if c["policy"] not in seen:
            seen.add(c["policy"])
            if c not in chosen:
                chosen.append(c)
    for c in chosen:
        kw = {"iterations": sim_iterations(setup, c), **sim_kw}
        d = simulate_candidate(fn, setup, c, **kw)
        tps = d.get("tokens_per_s")
        c["sim_tokens_per_s"] = None if tps is None else tps * c.get("static_batch_factor", 1.0)
    return "analytic+sim", [
        f"simulator confirmed {len(chosen)} candidates (top {top} and each policy's best)"
    ]


# ---- the plan ---------------------------------------------------------------------------------

def static_batch_factor(setup: Setup, candidate: dict, reps: int = 1000) -> float:
    """Throughput of a static batch (all B sequences start together, the batch ends with its slowest
    sequence) over the steady-state figure, for a candidate: (steady rounds) / (expected rounds).

    Without speculation every sequence needs output_len − 1 rounds, so the factor is 1. With it,
    the slowest of B sequences takes more rounds than the mean τ suggests (rounds.expected_rounds).
    """
    if candidate["gamma"] == 0:
        return 1.0

    wl = setup.workload
    alpha = wl.acceptance.alpha_at(candidate["gamma"], candidate["draft_experts"])
    tau = candidate["tokens_per_iteration"] / candidate["batch"]
    steady = (wl.output_len - 1) / tau
    return steady / _rounds(
        candidate["batch"], candidate["gamma"], round(alpha, 4), wl.output_len, reps
    )


@lru_cache(maxsize=4096)
def _rounds(batch: int, gamma: int, alpha: float, output_len: int, reps: int) -> float:

    return expected_rounds(batch, gamma, alpha, output_len, reps=reps)


def _apply_static_batch(setup: Setup, candidates: list[dict]) -> None:
    for c in candidates:
        f = static_batch_factor(setup, c) if c["fits"] else 1.0
        c["static_batch_factor"] = f
        c["steady_tokens_per_s"] = c["tokens_per_s"]
        if c["tokens_per_s"] is not None:
            c["tokens_per_s"] *= f
            for q in ("p10", "p50", "p90"):
                c[f"tokens_per_s_{q}"] *= f


def plan(
    model="mixtral-8x7b",
    hardware="h100-pcie",
    batch: int = 64,
    policies: Iterable[str] = PLANNED,
    gammas: Iterable[int] = range(17),
    draft_experts: Iterable[int] | None = None,
    confirm: str = "auto",
    top: int = 3,
    refine: bool = True,
    explain: bool = True,
    sim_options: dict | None = None,
    static_batch: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Search analytically, confirm by simulation where available, explain the choice.

    static_batch: the batch is served as one static batch of output_len tokens per sequence (as
        `specmoe engine run` does) rather than steadily refilled; throughput then counts the
        rounds until the slowest sequence is done.
    kwargs: workload and policy parameters of `specmoe.app.api.resolve` (acceptance, routing,
    prompt_len, output_len, draft_set, resident_experts, lru_slots, ...).
    Returns {model, hardware, batch, best, best_by_policy, candidates, explanation, engine, notes}.
    """
    if confirm not in SIM_MODES:
        raise SpecMoEError(f"confirm={confirm!r}: allowed {SIM_MODES}")
    params = {
        k: kwargs.pop(k) for k in list(kwargs) if k in POLICY_PARAMS and kwargs[k] is not None
    }
    base = resolve(
        model=model, hardware=hardware, batch=batch, policy="ondemand", **params, **kwargs
    )
    candidates = search(base, policies, gammas, draft_experts, refine, params)
    if static_batch:
        _apply_static_batch(base, candidates)
    fitting = [c for c in candidates if c["fits"]]
    if not fitting:
        least = min(candidates, key=lambda c: c["gpu_memory_gb"])
        raise SpecMoEError(
            f"model {base.model.name} cannot fit on {base.system.name} at batch {batch} "
            f"with any policy: {least['reason']}"
        )
    engine, notes = _confirm(base, fitting, top, confirm, sim_options or {})
    key = "sim_tokens_per_s" if engine == "analytic+sim" else "tokens_per_s"
    best = max((c for c in fitting if c.get(key) is not None), key=lambda c: c[key])
    out = {
        "model": base.model.name,
        "hardware": base.system.name,
        "batch": batch,
        "best": {
            **{k: best[k] for k in BEST_KEYS},
            "speculation": best["gamma"] > 0,
            **({"sim_tokens_per_s": best["sim_tokens_per_s"]} if key != "tokens_per_s" else {}),
        },
        "best_by_policy": best_by_policy(fitting),
        "candidates": candidates,
        "calibrated": fitting[0]["calibrated"],
        "engine": engine,
        "notes": notes,
        "evidence": fitting[0]["evidence"],
        "acceptance_source": base.workload.acceptance.source,
        "verdict": verdict(best, fitting, base),
    }
    if explain:
        out["explanation"] = explain_choice(base, best, fitting)
    return out


def best_by_policy(candidates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in candidates:
        cur = out.get(c["policy"])
        if cur is None or c["tokens_per_s"] > cur["tokens_per_s"]:
            out[c["policy"]] = {
                k: c[k]
                for k in (
                    "gamma",
                    "draft_experts",
                    "tokens_per_s",
                    "tpot_ms",
                    "tokens_per_s_p10",
                    "tokens_per_s_p90",
                )
            }
    return out


def verdict(best: dict, fitting: list[dict], setup: Setup | None = None) -> dict[str, Any]:
    """Clear winner, or too close to call: does the best option's p10–p90 band of tokens/s overlap
    the band of the best option of any other policy? The rivals it overlaps are listed."""
    rivals = {}
    for c in fitting:
        if c["policy"] != best["policy"] and c.get("tokens_per_s_p10") is not None:
            if c["policy"] not in rivals or c["tokens_per_s"] > rivals[c["policy"]]["tokens_per_s"]:
                rivals[c["policy"]] = c
    close = [r for r in rivals.values() if overlap(best, r)]
    brief = [
        {
            k: r[k]
            for k in (
                "policy",
                "gamma",
                "draft_experts",
                "tokens_per_s",
                "tokens_per_s_p10",
                "tokens_per_s_p90",
            )
        }
        for r in sorted(close, key=lambda r: -r["tokens_per_s"])
    ]
    out = {"too_close_to_call": bool(close), "overlapping": brief,
           "band": "p10-p90 of tokens/s, from the spreads of cost parameters and acceptance"}
    if close and setup is not None:
        out["measure_to_separate"] = separating_input(
            setup, best, max(close, key=lambda r: r["tokens_per_s"])
        )
    return out


def separating_input(setup: Setup, best: dict, rival: dict) -> dict[str, Any]:
    """The uncertain input whose 1σ change moves best/rival throughput most: measure it first.

    Each input (cost parameter with a spread, and α where a candidate speculates) is moved up by
    its spread alone; the change of log(tokens/s of best ÷ tokens/s of rival) ranks them."""
    ev = evidence_for(setup.system)
    base = params_for(setup.system)

    def ratio(params: CostParams, d_alpha: float = 0.0) -> float:
        costs = prediction_costs(setup.model, setup.system, params)
        an = Analytic(setup.model, setup.system, setup.workload, costs)
        tps = []
        for c in (best, rival):
            pol = make_policy(c["policy"]).with_(
                **{k: getattr(setup.policy, k) for k in POLICY_PARAMS}
            )
            pol = pol.with_(gamma=c["gamma"], draft_experts=c["draft_experts"])
            a = setup.workload.acceptance.alpha_at(pol.gamma, pol.draft_experts)
            alpha = min(max(a + d_alpha, 0.0), 0.995) if pol.gamma else None
            tps.append(float(np.ravel(an.evaluate(pol, alpha=alpha).tokens_per_s)[0]))
        return tps[0] / tps[1]

    r0 = ratio(base)
    effects = {k: abs(np.log(ratio(replace(base, **{k: getattr(base, k) * np.exp(s)})) / r0))
               for k, s in ev.spreads.items() if s > 0 and getattr(base, k) is not None}
    spread = setup.workload.acceptance.alpha_spread
    if spread > 0 and (best["gamma"] or rival["gamma"]):
        effects["acceptance (alpha)"] = abs(np.log(ratio(base, spread) / r0))
    top = max(effects, key=effects.get) if effects else None
    if top is None or effects[top] < 0.005:  # both do the same work (e.g. every expert resident)
        return {
            "input": None,
            "why": "no uncertain input moves the two apart (they do the same work)",
        }
    src = ev.sources.get(top, setup.workload.acceptance.source)
    return {
        "input": top,
        "effect_pct": 100 * float(np.expm1(effects[top])),
        "effects_pct": {
            k: 100 * float(np.expm1(v)) for k, v in sorted(effects.items(), key=lambda kv: -kv[1])
        },
        "why": f"a 1σ change of {top} moves {best['policy']} ÷ {rival['policy']} throughput by "
        f"{100 * float(np.expm1(effects[top])):.0f}%, more than any other input; its evidence: "
        f"{src}",
    }


# ---- checks against measurements ---------------------------------------------------------------

def compare_with_measured(measured: Iterable[tuple[int, float]], planned_gamma: int,
                          target: float = 0.97) -> dict[str, Any]:
    """How close the planned γ comes to the best measured one, from measured (γ, tokens/s) pairs.

    Where the planned γ was not measured its throughput is interpolated between the measured
    neighbours (and the result says so); outside the measured range it is an error.
    """
    pts = sorted((int(g), float(v)) for g, v in measured)
    if not pts:
        raise SpecMoEError("measured: give at least one (gamma, tokens_per_s) pair")
    if any(v <= 0 for _, v in pts):
        raise SpecMoEError("measured: tokens_per_s must be > 0")
    gs, vs = np.array([g for g, _ in pts]), np.array([v for _, v in pts])
    if not gs[0] <= planned_gamma <= gs[-1]:
        raise SpecMoEError(
            f"planned_gamma={planned_gamma}: outside the measured γ range {gs[0]}..{gs[-1]}"
        )
    i = int(np.argmax(vs))
    at_plan = float(np.interp(planned_gamma, gs, vs))
    ratio = at_plan / vs[i]
    return {
        "planned_gamma": int(planned_gamma),
        "planned_tokens_per_s": at_plan,
        "interpolated": int(planned_gamma) not in set(gs.tolist()),
        "best_gamma": int(gs[i]),
        "best_tokens_per_s": float(vs[i]),
        "ratio": float(ratio),
        "meets_target": bool(ratio >= target),
        "target": target,
    }


# ---- online γ for an engine ------------------------------------------------------------------

class GammaController:
    """γ for `--gamma auto`: the planner's γ at start, re-planned as measured acceptance comes in.

        ctl = GammaController("mixtral-8x7b", "h100-pcie", Workload(batch=32))
        gamma = ctl.gamma
        ... after each verification: gamma = ctl.observe(accepted, drafted)

    Acceptance is estimated as the per-position i.i.d. α of τ(γ) = (1 − α^(γ+1))/(1 − α): a sequence
    that accepts a of d drafted tokens contributes α^a·(1−α)^[a<d] to the likelihood, so α̂ =
    Σa / (Σa + #rejections). The workload's α is a Beta prior worth `prior_tokens` observations;
    `decay` < 1 forgets old evidence (acceptance drifts with the text). γ changes only when the
    analytic model predicts at least `min_gain` more throughput (no flapping on noise).
    While speculation is off nothing is observed; `probe_every` > 0 drafts every that many
    iterations with the best speculative γ to keep measuring.
    """

    def __init__(
        self,
        model,
        system,
        workload: Workload | None = None,
        draft_experts: int | None = None,
        gammas: Iterable[int] = range(17),
        prior_tokens: float = 32.0,
        decay: float = 1.0,
        min_gain: float = 0.01,
        probe_every: int = 0,
        **policy_params: Any,
    ):
        wl = workload or Workload()
        if not 0.0 < decay <= 1.0:
            raise SpecMoEError(f"decay={decay}: allowed (0, 1]")
        if prior_tokens < 0 or min_gain < 0 or probe_every < 0:
            raise SpecMoEError("prior_tokens, min_gain and probe_every must be >= 0")
        self.gammas = np.array(sorted({int(g) for g in gammas}))
        if self.gammas.size == 0 or self.gammas[0] < 0:
            raise SpecMoEError(f"gammas={list(gammas)}: give draft lengths >= 0")
        self.setup = resolve(model=model, hardware=system, batch=wl.batch, policy="specmoe",
                             acceptance=wl.acceptance, routing=wl.routing, prompt_len=wl.prompt_len,
                             output_len=wl.output_len, **policy_params)
        self.analytic = Analytic(self.setup.model, self.setup.system, self.setup.workload)
        self.batch = wl.batch
        self.draft_experts = draft_experts or self._plan_draft_experts()
        self.prior_alpha = float(self.setup.workload.acceptance.alpha_for(self.draft_experts))
        self.prior_tokens, self.decay, self.min_gain, self.probe_every = (
            prior_tokens,
            decay,
            min_gain,
            probe_every,
        )
        self.accepted = self.rejections = 0.0
        self.observations = self._off_iterations = 0
        self._probing = False
        self._gamma = self.best_gamma(self.alpha)

    def _plan_draft_experts(self) -> int:
        cands = search(self.setup, ("specmoe",), [int(g) for g in self.gammas if g > 0] or [1])
        fitting = [c for c in cands if c["fits"]]
        if not fitting:
            raise SpecMoEError(f"{self.setup.model.name} does not fit on {self.setup.system.name} "
                               f"at batch {self.batch} with specmoe")
        return int(max(fitting, key=lambda c: c["tokens_per_s"])["draft_experts"])

    @property
    def alpha(self) -> float:
        """Posterior mean of the acceptance rate."""
        a = self.accepted + self.prior_tokens * self.prior_alpha
        n = self.accepted + self.rejections + self.prior_tokens
        return float(a / n) if n > 0 else self.prior_alpha

    @property
    def gamma(self) -> int:
        return self._gamma

    def predicted(self, alpha: float | None = None) -> np.ndarray:
        """Analytic tokens/s per γ of `self.gammas` at the current batch and α (−inf where it does
        not fit)."""
        a = self.alpha if alpha is None else alpha
        a = min(max(a, 0.0), 0.999)
        res = self.analytic.evaluate(self.setup.policy, batch=self.batch, gamma=self.gammas,
                                     draft_experts=self.draft_experts, alpha=a)
        return np.where(res.fits, res.tokens_per_s, -np.inf)

    def best_gamma(self, alpha: float | None = None) -> int:
        tps = self.predicted(alpha)
        if not np.isfinite(tps).any():
            raise SpecMoEError(
                f"{self.setup.model.name} does not fit on {self.setup.system.name} "
                f"at batch {self.batch}"
            )
        return int(self.gammas[int(np.argmax(tps))])

    def _replan(self) -> int:
        tps = self.predicted()
        cur = np.flatnonzero(self.gammas == self._gamma)
        best = int(np.argmax(tps))
        cur_tps = tps[cur[0]] if cur.size else -np.inf
        if tps[best] > cur_tps * (1.0 + self.min_gain) or not np.isfinite(cur_tps):
            self._gamma = int(self.gammas[best])
        return self._gamma

    def observe(self, accepted, drafted) -> int:
        """Feed one verification: accepted and drafted tokens per sequence (ints or arrays). Returns
        γ."""
        a = np.atleast_1d(np.asarray(accepted, dtype=float))
        d = np.atleast_1d(np.asarray(drafted, dtype=float))
        if a.shape != d.shape:
            raise SpecMoEError(
                f"observe: accepted has shape {a.shape}, drafted {d.shape}; "
                "give one count per sequence"
            )
        if np.any(d < 0) or np.any(a < 0) or np.any(a > d):
            raise SpecMoEError(
                f"observe: need 0 <= accepted <= drafted (got accepted={a.tolist()}, "
                f"drafted={d.tolist()})"
            )
        if d.sum() == 0:   # speculation was off: nothing to learn; probe now and then if asked
            return self._off_iteration()
        self._probing = False
        self.accepted = self.accepted * self.decay + a.sum()
        self.rejections = self.rejections * self.decay + float(np.sum(a < d))
        self.observations += 1
        return self._replan()

    def _off_iteration(self) -> int:
        if self._gamma > 0 and not self._probing:
            return self._gamma
        self._off_iterations += 1
        if self.probe_every and self._off_iterations % self.probe_every == 0:
            spec = self.gammas[self.gammas > 0]
            if spec.size:
                tps = self.predicted()[self.gammas > 0]
                self._probing = True
                return int(spec[int(np.argmax(tps))])
        self._probing = False
        return self._gamma

    def set_batch(self, batch: int) -> int:
        """The engine's batch changed (requests came or finished): re-plan at the new batch."""
        if int(batch) < 1:
            raise SpecMoEError(f"batch={batch}: must be >= 1")
        self.batch = int(batch)
        return self._replan()

    def state(self) -> dict[str, Any]:
        return {
            "gamma": self._gamma,
            "alpha": self.alpha,
            "prior_alpha": self.prior_alpha,
            "accepted": self.accepted,
            "rejections": self.rejections,
            "observations": self.observations,
            "batch": self.batch,
            "draft_experts": self.draft_experts,
        }
