"""Discrete-event simulator of MoE decoding with expert offloading and speculation (SimPy).

    from specmoe.predictors.sim import simulate
    r = simulate(model="mixtral-8x7b", hardware="h100-pcie", policy="specmoe", batch=64, gamma=5)
    r.tokens_per_s, r.to_dict()

The story of one decode iteration (processes below read in that order):
  routing of every position this iteration is sampled (RoutingSampler); a speculative policy
  drafts γ tokens (policy.draft); the target runs one pass (`forward`): per decoder layer the GPU
  runs attention and the router, the layer's missing experts are copied over the H2D engine
  (one copy per expert, demand ahead of prefetch), and the grouped expert kernel starts once all
  of the layer's experts are in HBM (one fused MoE kernel per layer, as the engine runs it; a
  per-expert kernel could start earlier but launches E times); CPU experts run alongside. Then
  acceptance is sampled and the policy updates its cache or draft set.

Offline mode: a fixed batch in steady state (sequences at staggered positions, each restarting at
the prompt once it has produced output_len tokens, so the mean context is the analytic model's
prompt + output/2), N iterations after one prefill pass (its time is the TTFT).
Serving mode: requests arrive (Poisson or given times), join at iteration boundaries up to the
batch size (continuous batching), are prefilled in one pass per admission, and leave when done.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from specmoe.costs.ops import BREAKDOWN, prediction_costs
from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import ANALYTIC, validate_policy
from specmoe.inputs.setup import resolve
from specmoe.inputs.tree import level_probs, tree_size
from specmoe.measure.trace import Header
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.capacity import offered_load, requests_per_s
from specmoe.predictors.intervals import OUTPUTS, evaluate_intervals, provenance
from specmoe.predictors.sim.entities import DEMAND, PREFETCH, CopyEngine, Cpu, Meter, Recorder, Ssd
from specmoe.predictors.sim.policies import (
    POLICY_CLASSES,
    PassPlan,
    alpha_of,
)
from specmoe.predictors.sim.result import SimResult, percentiles
from specmoe.predictors.sim.routing import (
    RoutingSampler,
    sample_accepted,
    sample_accepted_levels,
    tree_layout,
)

CAPACITY_ITERATIONS = 40   # offline iterations behind a serving run's capacity (~0.1 s for Mixtral)


@dataclass(frozen=True)
class SimOptions:
    """Modelling choices that are not part of the shared policy vocabulary.

    moespec_acceptance_penalty: relative cut of α under moespec's expert budget. 0 by default:
        no per-token acceptance figure for budgeted verification is available to cite; set it from
        engine measurements (specmoe.engine) when they exist.
    pattern_orders: random expert orders behind the routing sampler's k-sets (co-activation
        variety).
    """

    moespec_acceptance_penalty: float = 0.0
    pattern_orders: int = 32

    def __post_init__(self):
        if not 0.0 <= self.moespec_acceptance_penalty <= 1.0:
            raise SpecMoEError(
                f"moespec_acceptance_penalty={self.moespec_acceptance_penalty}: allowed [0, 1]"
            )
        if self.pattern_orders < 1:
            raise SpecMoEError(f"pattern_orders={self.pattern_orders}: must be >= 1")


@dataclass(frozen=True)
class Serving:
    """Serving mode: `requests` Poisson arrivals at `rate` per second, or explicit arrival times
    (s).

    warmup: the first `warmup` requests are served but left out of the latency percentiles (they
    meet cold expert caches and draft sets that a server in steady state does not).
    """

    rate: float | None = None
    requests: int = 100
    arrivals: tuple[float, ...] | None = None
    warmup: int = 0

    def __post_init__(self):
        if self.arrivals is None:
            if self.rate is None or not self.rate > 0 or not math.isfinite(self.rate):
                raise SpecMoEError(
                    f"rate={self.rate}: serving needs an arrival rate > 0 requests/s "
                    "(or a list of arrival times)"
                )
            if self.requests < 1:
                raise SpecMoEError(f"requests={self.requests}: must be >= 1")
        else:
            a = np.asarray(self.arrivals, dtype=float)
            if a.size == 0 or np.any(a < 0) or not np.all(np.isfinite(a)):
                raise SpecMoEError("arrivals: give one or more finite arrival times >= 0 (seconds)")
        n = self.requests if self.arrivals is None else len(self.arrivals)
        if not 0 <= self.warmup < n:
            raise SpecMoEError(
                f"warmup={self.warmup}: allowed 0..{n - 1} (fewer than the requests)"
            )

    def times(self, rng: np.random.Generator) -> np.ndarray:
        if self.arrivals is not None:
            return np.sort(np.asarray(self.arrivals, dtype=float))
        return np.cumsum(rng.exponential(1.0 / self.rate, size=self.requests))


class Stats:
    def __init__(self):
        self.hits = self.lookups = self.dropped_pairs = 0


class Simulator:
    """One simulated run of a resolved Setup (specmoe.app.api.resolve)."""

    def __init__(self, setup, iterations: int = 200, seed: int = 0, trace: bool = False,
                 serving: Serving | None = None, options: SimOptions | None = None, params=None):
        if not isinstance(iterations, (int, np.integer)) or iterations < 1:
            raise SpecMoEError(f"iterations={iterations!r}: must be a whole number >= 1")
        self.setup, self.iterations, self.seed = setup, int(iterations), int(seed)
        self.model, self.system = setup.model, setup.system
        self.workload, self.policy = setup.workload, setup.policy
        self.options = options or SimOptions()
        self.serving = serving
        self._check()
        m = self.model
        # params: calibrated CostParams, or the system's
        self.costs = prediction_costs(m, self.system, params)
        # Independent streams, so that policies compared at one seed see the same routing,
        # acceptance and arrivals (common random numbers) whatever random choices they make.
        streams = [np.random.default_rng(c) for c in np.random.SeedSequence(seed).spawn(4)]
        self.route_rng, self.accept_rng, self.rng, self.arrival_rng = streams
        self.L, self.E, self.k = m.num_moe_layers, m.num_experts, m.top_k
        self.probs = self.workload.routing.inclusion_probs(self.E, self.k, self.L)
        self.moe_layer_ids = np.asarray(m.moe_layer_ids)
        self._layer_map()
        self.env = simpy.Environment()
        self.rec = Recorder() if trace else None
        self.gpu = simpy.Resource(self.env, capacity=1)
        self.gpu_meter = Meter("gpu")
        self.h2d = CopyEngine(self.env, "h2d", self.rec)
        self.d2h = CopyEngine(self.env, "d2h", self.rec)
        self.cpu = Cpu(self.env, self.rec)
        self.fetch_h2d_s = float(self.costs.h2d(m.expert_bytes, 1))
        self.ssd_s = float(self.costs.ssd_per_expert())
        self.fetch_s = float(self.costs.expert_fetch(1))
        self.ssd = (
            Ssd(self.env, self.rec, m.expert_bytes * self._ssd_share()) if self.ssd_s > 0 else None
        )
        self.act_bytes_per_token = m.hidden_size * m.dtype_bytes
        self.alpha = alpha_of(self.workload, self.policy)
        self._analytic = Analytic(m, self.system, self.workload, self.costs)
        self.stats = Stats()
        self.staged = self.peak_layer_fetch = 0
        self.step = 0
        routing = self.workload.routing
        big = routing.module_shares(self.L)[0] if routing.adaptive else None
        self.sampler = RoutingSampler(routing.selection_probs(self.E, self.k, self.L), self.k,
                                      routing.temporal_reuse, self.workload.batch, self.route_rng,
                                      self.options.pattern_orders, big_share=big)
        self.pol = POLICY_CLASSES[self.policy.name](self)
        self._head_key, self._head = None, None
        self.bd = dict.fromkeys(BREAKDOWN + ("prefill",), 0.0)

    # ---- set-up -------------------------------------------------------------------------------
    def _check(self) -> None:
        p, m = self.policy, self.model
        validate_policy(p, m.num_experts, m.num_layers)
        if p.expert_budget is not None and p.expert_budget > m.num_experts:
            raise SpecMoEError(
                f"expert_budget={p.expert_budget}: the model has only {m.num_experts} "
                "experts per layer"
            )
        if p.name in ("specmoe",) and p.gamma > 0 and p.draft_experts < 1:
            raise SpecMoEError(
                "draft_experts=0: specmoe drafts with at least 1 resident expert per layer"
            )

    def _layer_map(self) -> None:
        """moe_index[i]: MoE layer number of decoder layer i (−1 if dense); next_moe[i]: the first
        MoE layer after decoder layer i (what a prefetcher working during layer i fetches)."""
        n = self.model.num_layers
        self.moe_index = [-1] * n
        for j, i in enumerate(self.moe_layer_ids):
            self.moe_index[int(i)] = j
        self.next_moe = [-1] * n
        for i in range(n):
            later = np.flatnonzero(self.moe_layer_ids > i)
            self.next_moe[i] = int(later[0]) if later.size else -1
        self.prefetchable = self.moe_layer_ids > 0

    def _ssd_share(self) -> float:
        return self.ssd_s * self.costs.ssd_bw * self.costs.p.ssd_eff / self.model.expert_bytes

    def cache_slots(self) -> int:
        """Experts per layer a cache holds: the one residency rule (costs.memory), as the analytic
        model."""
        return int(
            self._analytic.cache_slots(np.asarray(float(self.workload.batch)), 0.0, self.policy)
        )

    def draft_step_s(self, tokens: int, batch: int, context: float) -> float:
        """A separate draft model's step over `tokens` positions of `batch` sequences:
        draft_model_ratio × the target's compute for them as if all its weights were resident."""
        attn, gate, dense, lm = self._head_costs(tokens, batch, context)
        m = self.model
        u = min(self.E, float(self._analytic.counts.distinct_and_missing(float(tokens), 0)[0]))
        target = (m.num_layers * attn + self.L * gate + m.num_dense_layers * dense + lm
                  + self.L * float(self.costs.experts(tokens * self._analytic.k_eff, u)))
        return self.policy.draft_model_ratio * target

    def _head_costs(self, tokens, batch, context, causal=False):
        key = (tokens, batch, context, causal)
        if key != self._head_key:
            c = self.costs
            # Duo-LLM's small modules run beside the router: their layer mean joins the gate's time.
            r = self.workload.routing
            small = 0.0
            if r.small_module_ratio:
                layer_sum = sum(float(c.small_module(tokens * sh, r.small_module_ratio))
                                for sh in self._analytic.small_share)
                small = layer_sum / self.L
            self._head = (float(c.attention_block(tokens, batch, context, causal)
                                + c.layer_fixed()),
                          float(c.router_and_shared(tokens)) + small,
                          float(c.dense_ffn(tokens)) if self.model.num_dense_layers else 0.0,
                          float(c.lm_head(tokens)))
            self._head_key = key
        return self._head

    # ---- processes ----------------------------------------------------------------------------
    def fetch(self, n: int, cls: int, phase: str, layer: int, mask=None) -> simpy.Process:
        """Copy `n` experts of MoE layer `layer` host → GPU (staging buffers until used)."""
        self.staged += n
        self.peak_layer_fetch = max(self.peak_layer_fetch, self.staged)
        if self.rec is None:
            return self.h2d.copy(
                n, self.fetch_h2d_s, self.model.expert_bytes, cls, "expert", self.ssd, self.ssd_s
            )
        ids = np.flatnonzero(mask) if mask is not None else None
        return self.h2d.copy(
            n,
            self.fetch_h2d_s,
            self.model.expert_bytes,
            cls,
            "expert",
            self.ssd,
            self.ssd_s,
            ids,
            layer=int(self.moe_layer_ids[layer]),
            step=self.step,
            phase=phase,
        )

    def gpu_op(self, name: str, cat: str, seconds: float, category: str, **fields):
        """A GPU op outside a target pass (a separate draft model's step)."""
        with self.gpu.request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(seconds)
        self.gpu_meter.add(seconds)
        self.bd[category] += seconds
        if self.rec is not None:
            self.rec.span(name, cat, start, seconds, "gpu", step=self.step, phase="draft", **fields)

    def forward(self, plan: PassPlan):
        """One pass of the target model; the GPU stream runs the layers in order."""
        env, rec = self.env, self.rec
        attn_s, gate_s, dense_s, lm_s = self._head_costs(plan.tokens, plan.batch, plan.context,
                                                         causal=plan.phase == "prefill")
        expert_s, demand = plan.expert_s.tolist(), plan.demand.tolist()
        prefetch = plan.prefetch.tolist() if plan.prefetch is not None else None
        pending = dict(plan.pending)            # MoE layer -> (fetch under way, experts)
        cpu = plan.cpu or {}
        t_attn = t_dense = t_exp = t_h2d = t_cpu = 0.0
        start_pass = env.now
        with self.gpu.request() as req:
            yield req
            for i, l in enumerate(self.moe_index):
                if prefetch is not None:
                    nl = self.next_moe[i]
                    if nl >= 0 and prefetch[nl] and nl not in pending:
                        ev = self.fetch(
                            prefetch[nl], PREFETCH, plan.phase, nl, plan.prefetch_mask[nl]
                        )
                        pending[nl] = (ev, prefetch[nl])
                t0 = env.now
                if l < 0:                                   # a dense decoder layer
                    yield env.timeout(attn_s + dense_s)
                    t_attn += attn_s
                    t_dense += dense_s
                    if rec is not None:
                        self._rec_head(plan, i, t0, attn_s, "dense ffn", "gemm", dense_s)
                    continue
                yield env.timeout(attn_s + gate_s)
                t_attn += attn_s
                t_dense += gate_s
                if rec is not None:
                    self._rec_head(plan, i, t0, attn_s, "router", "gate", gate_s)
                cpu_ev = self._cpu_job(cpu[l], plan, i) if l in cpu else None
                held = 0
                if demand[l]:
                    ev = self.fetch(demand[l], DEMAND, plan.phase, l,
                                    plan.demand_mask[l] if plan.demand_mask is not None else None)
                    held += demand[l]
                    t0 = env.now
                    yield ev
                    t_h2d += env.now - t0
                if l in pending:
                    ev, n = pending.pop(l)
                    held += n
                    t0 = env.now
                    yield ev
                    t_h2d += env.now - t0
                d = expert_s[l]
                if d > 0:
                    t0 = env.now
                    yield env.timeout(d)
                    t_exp += d
                    if rec is not None:
                        rec.span(
                            "experts",
                            "moe",
                            t0,
                            d,
                            "gpu",
                            layer=i,
                            step=self.step,
                            phase=plan.phase,
                            tokens=int(plan.tokens),
                        )
                self.staged -= held
                if cpu_ev is not None:
                    t0 = env.now
                    yield cpu_ev
                    t_cpu += env.now - t0
            t0 = env.now
            yield env.timeout(lm_s)
            t_dense += lm_s
            if rec is not None:
                rec.span(
                    "lm_head",
                    "lm_head",
                    t0,
                    lm_s,
                    "gpu",
                    step=self.step,
                    phase=plan.phase,
                    tokens=int(plan.tokens),
                )
        self.gpu_meter.add(t_attn + t_dense + t_exp)
        bd = self.bd
        if plan.phase == "draft":
            bd["draft"] += env.now - start_pass
        elif plan.phase == "prefill":
            bd["prefill"] += env.now - start_pass
        else:
            bd["attention"] += t_attn
            bd["dense"] += t_dense
            bd["expert_compute"] += t_exp
            bd["h2d"] += t_h2d
            bd["cpu_expert"] += t_cpu

    def _rec_head(self, plan, layer, t0, attn_s, name, cat, d):
        f = dict(layer=layer, step=self.step, phase=plan.phase, tokens=int(plan.tokens))
        self.rec.span("attention", "attn", t0, attn_s, "gpu", **f)
        self.rec.span(name, cat, t0 + attn_s, d, "gpu", **f)

    def _cpu_job(self, job, plan, layer):
        durations, tokens, ids, act_bytes = job
        act_s = float(self.costs.h2d(act_bytes, 1))
        fields = dict(layer=layer, step=self.step, phase=plan.phase) if self.rec is not None else {}
        return self.cpu.experts(
            durations, tokens, ids, self.d2h, self.h2d, act_s, act_bytes, **fields
        )

    def iteration(self, slots: np.ndarray, context: float):
        """One decode iteration of the sequences in `slots`; returns tokens produced per
        sequence."""
        B = len(slots)
        g = self.pol.gamma_for(B)
        p = self.policy
        offsets = tree_layout(g, p.tree_width, p.tree_levels)      # a chain: 0, 1, ..., γ+1
        counts, pats = self.sampler.sample(slots, int(offsets[-1]))
        if g > 0:
            # Draft level d+1 runs over the nodes of depth d: their routed tokens, summed.
            by_level = np.add.reduceat(counts, offsets[:-1], axis=1)
            yield from self.pol.draft(by_level, B, context, np.diff(offsets))
            verify = counts.sum(axis=1)
            yield from self.forward(
                self.pol.plan(verify, "verify", B * int(offsets[-1]), B, context)
            )
            if p.tree_width == 1:
                accepted = sample_accepted(self.accept_rng, self.pol.alpha, g, B)
            else:
                passes = level_probs(self.pol.alpha, g, p.tree_width, p.tree_levels)
                accepted = sample_accepted_levels(self.accept_rng, passes, B)
            self.pol.after(verify, "verify")
            if self.rec is not None:
                self.rec.span("accept", "accept", self.env.now, 0.0, "gpu", step=self.step,
                              tokens=int(accepted.sum() + B), phase="verify")
        else:
            yield from self.forward(self.pol.plan(counts[:, 0, :], "decode", B, B, context))
            accepted = np.zeros(B, dtype=np.int64)
            self.pol.after(counts[:, 0, :], "decode")
        # the accepted node's level (its first)
        self.sampler.commit(slots, pats, offsets[accepted])
        self.step += 1
        return accepted + 1, g

    def prefill(self, slots: np.ndarray):
        """One pass over the prompts of new sequences (routing drawn in aggregate)."""
        n, P = len(slots), self.workload.prompt_len
        counts = self.sampler.aggregate(n * P)
        yield from self.forward(self.pol.plan(counts, "prefill", n * P, n, P / 2.0))
        self.pol.after(counts, "prefill")
        self.sampler.reset(slots)

    # ---- drivers ------------------------------------------------------------------------------
    def _offline(self):
        w = self.workload
        B = w.batch
        slots = np.arange(B)
        t0 = self.env.now
        yield from self.prefill(slots)
        self.ttft = [self.env.now - t0]
        self._mark()
        # staggered: steady state from the start
        produced = (np.arange(B) * w.output_len) // B
        for _ in range(self.iterations):
            ctx = w.prompt_len + float(np.mean(produced % w.output_len))
            t = self.env.now
            toks, g = yield from self.iteration(slots, ctx)
            dt = self.env.now - t
            self._log_iteration(dt, toks, toks, g)
            produced += toks

    def _serving(self):
        w, env = self.workload, self.env
        times = self.serving.times(self.arrival_rng)
        n = len(times)
        self.req_arrival, self.req_first = times, np.full(n, np.nan)
        self.req_done = np.full(n, np.nan)
        self.idle: list[tuple[float, float]] = []     # spans with nothing to run
        waiting: list[int] = []
        wake = [env.event()]

        def arrivals():
            for r, t in enumerate(times):
                yield env.timeout(t - env.now)
                waiting.append(r)
                if not wake[0].triggered:
                    wake[0].succeed()

        env.process(arrivals())
        free = list(range(w.batch))[::-1]
        running: dict[int, int] = {}          # slot -> request
        produced = np.zeros(w.batch, dtype=np.int64)
        done = 0
        self._mark()
        while done < n:
            if not running and not waiting:
                wake[0] = env.event()
                t_idle = env.now
                yield wake[0]
                self.idle.append((t_idle, env.now))
            new = [free.pop() for _ in range(min(len(free), len(waiting)))]
            if new:
                for s in new:
                    running[s] = waiting.pop(0)
                    produced[s] = 1                 # prefill yields the first token
                yield from self.prefill(np.asarray(new))
                for s in new:
                    self.req_first[running[s]] = env.now
                done += self._retire(running, produced, free, w.output_len)
            if not running:
                continue
            slots = np.asarray(sorted(running))
            ctx = w.prompt_len + float(np.mean(produced[slots]))
            t = env.now
            toks, g = yield from self.iteration(slots, ctx)
            self._log_iteration(
                env.now - t, toks, np.minimum(toks, w.output_len - produced[slots]), g
            )
            produced[slots] += toks
            done += self._retire(running, produced, free, w.output_len)

    def _retire(self, running, produced, free, out_len) -> int:
        finished = [s for s, r in running.items() if produced[s] >= out_len]
        for s in finished:
            self.req_done[running.pop(s)] = self.env.now
            free.append(s)
        return len(finished)

    def _mark(self) -> None:
        """Start of the measured span: counters before it (offline prefill) are left out."""
        self.t_start = self.env.now
        self.meter0 = {m.name: m.snapshot() for m in self._meters()}
        self.bd = dict.fromkeys(self.bd, 0.0)
        self.stats = Stats()
        self.iter_s, self.iter_tokens, self.iter_batch, self.iter_gamma = [], [], [], []
        self.tpot_samples, self.verified = [], []

    def _log_iteration(self, dt, toks, kept, g) -> None:
        """`toks`: tokens each sequence got from the iteration; `kept`: those within its output."""
        self.iter_s.append(dt)
        self.iter_tokens.append(int(kept.sum()))
        self.iter_batch.append(len(toks))
        self.iter_gamma.append(g)
        self.tpot_samples.append(dt / toks)
        if g > 0:
            self.verified.append(float(toks.mean()))

    def _meters(self):
        out = [self.gpu_meter, self.h2d.meter, self.d2h.meter, self.cpu.meter]
        return out + ([self.ssd.meter] if self.ssd is not None else [])

    # ---- run ----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        wall = time.perf_counter()
        self.env.process(self._serving() if self.serving is not None else self._offline())
        self.env.run()
        wall = time.perf_counter() - wall
        return self._result(wall)

    def _result(self, wall: float) -> SimResult:
        w = self.workload
        serving = self.serving is not None
        iters = len(self.iter_s)
        if serving:                    # from the first arrival to the last completion
            span = float(np.nanmax(self.req_done) - self.req_arrival[0])
        else:
            span = self.env.now - self.t_start
        tokens = int(np.sum(self.iter_tokens))
        used = {
            mt.name: (mt.busy - self.meter0[mt.name][0], mt.bytes - self.meter0[mt.name][1])
            for mt in self._meters()
        }
        util = {k: (v[0] / span if span > 0 else 0.0) for k, v in used.items()}
        nbytes = {k: used[k][1] if k in used else 0.0 for k in ("h2d", "d2h", "ssd")}
        spec = self.verified
        mean_iter = float(np.mean(self.iter_s)) if iters else 0.0
        if serving:
            tokens_all = tokens + int(np.sum(~np.isnan(self.req_first)))      # + first tokens
            tput = tokens_all / span if span > 0 else 0.0
            ok = ~np.isnan(self.req_done)
            ok[:self.serving.warmup] = False
            tpot_req = (self.req_done - self.req_first)[ok] / max(w.output_len - 1, 1)
            ttft = (self.req_first - self.req_arrival)[ok]
            tpot_ms, tpot_p = float(np.mean(tpot_req) * 1e3), percentiles(tpot_req * 1e3)
            ttft_ms, ttft_p = float(np.mean(ttft) * 1e3), percentiles(ttft * 1e3)
            requests = {
                "count": len(self.req_arrival),
                "completed": int(np.sum(~np.isnan(self.req_done))),
                "warmup": self.serving.warmup,
                "measured": int(ok.sum()),
                "first_arrival_s": float(self.req_arrival[0]),
                "last_done_s": float(np.nanmax(self.req_done)),
            }
            load = self._serving_load(span)
        else:
            tokens_all = tokens
            tput = tokens / span if span > 0 else 0.0
            tpot_all = np.concatenate(self.tpot_samples) if self.tpot_samples else np.zeros(0)
            tpot_ms = span * w.batch / tokens * 1e3 if tokens else 0.0
            tpot_p = percentiles(tpot_all * 1e3)
            ttft_ms, ttft_p = self.ttft[0] * 1e3, percentiles(np.asarray(self.ttft) * 1e3)
            requests, load = {}, {}
        bd = {
            k: v / iters if iters else 0.0 for k, v in self.bd.items() if k != "prefill" or serving
        }
        lookups = self.stats.lookups
        mem = self._memory()
        h2d = nbytes["h2d"]
        return SimResult(
            echo=self.setup.echo(),
            mode="serving" if serving else "offline",
            seed=self.seed,
            iterations=iters,
            tokens=tokens_all,
            makespan_s=span,
            tokens_per_s=tput,
            tpot_ms=tpot_ms,
            tpot_ms_percentiles=tpot_p,
            ttft_ms=ttft_ms,
            ttft_ms_percentiles=ttft_p,
            iteration_ms=mean_iter * 1e3,
            iteration_ms_percentiles=percentiles(np.asarray(self.iter_s) * 1e3),
            tokens_per_iteration=tokens / iters if iters else 0.0,
            bytes=nbytes,
            h2d_bytes_per_token=h2d / tokens_all if tokens_all else 0.0,
            h2d_bytes_per_iteration=h2d / iters if iters else 0.0,
            utilisation=util,
            cache_hit_rate=self.stats.hits / lookups if lookups else None,
            tokens_per_verification=float(np.mean(spec)) if spec else None,
            accepted_per_verification=float(np.mean(spec)) - 1.0 if spec else None,
            breakdown=bd,
            gpu_memory_gb=mem / 1e9,
            gpu_capacity_gb=self._analytic.mem.capacity_bytes / 1e9,
            gpu_hbm_gb=self.system.gpu.hbm_gb,
            fits=bool(mem <= self._analytic.mem.capacity_bytes),
            resident_experts_per_layer=self.pol.resident_per_layer,
            calibrated=bool(self.system.calibration),
            events=next(self.env._eid),
            wall_s=wall,
            requests=requests,
            load=load,
            trace_header=self._header() if self.rec is not None else None,
            trace_events=self.rec.events if self.rec is not None else None,
        )

    def _serving_load(self, span: float) -> dict[str, Any]:
        """Arrival demand against capacity (specmoe.predictors.capacity), and how busy the server
        was.

        Capacity comes from a short offline run of the same configuration (`steady_state`): its
        tokens/s at full batch and a warm prefill of B prompts at once (an upper bound, see
        capacity).
        """
        w, t = self.workload, self.req_arrival
        first = float(t[0])
        idle = sum(max(0.0, end - max(start, first)) for start, end in self.idle)
        out: dict[str, Any] = {"engine_busy": 1.0 - idle / span if span > 0 else 0.0}
        rate = self.serving.rate if self.serving.rate is not None else (
            (len(t) - 1) / float(t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None)
        ref = Simulator(
            self.setup,
            iterations=CAPACITY_ITERATIONS,
            seed=self.seed,
            options=self.options,
            params=self.costs.p,
        )
        tps, prefill_s = ref.steady_state()
        if rate is None or not ref.fits() or tps <= 0:
            return {**out, "rate_rps": rate, "capacity_rps": None, "load": None, "overloaded": None}
        cap = float(requests_per_s(tps, prefill_s, w.batch, w.output_len))
        return {
            **out,
            **offered_load(rate, cap),
            "demand_tokens_per_s": rate * w.output_len,
            "capacity_tokens_per_s": cap * w.output_len,
            "capacity_from": (
                f"offline simulation at batch {w.batch} ({CAPACITY_ITERATIONS} iterations) "
                f"and a warm prefill of {w.batch} prompts at once: an upper bound"
            ),
        }

    def steady_state(self) -> tuple[float, float]:
        """(decode tokens/s of a full batch, seconds of one prefill of B prompts with warm caches):
        the offline run, then one more prefill once the caches and draft sets have settled."""
        warm: list[float] = []

        def story():
            yield from self._offline()
            t = self.env.now
            yield from self.prefill(np.arange(self.workload.batch))
            warm.append(self.env.now - t)

        self.env.process(story())
        self.env.run()
        busy = float(np.sum(self.iter_s))
        return (float(np.sum(self.iter_tokens)) / busy if busy > 0 else 0.0), warm[0]

    def fits(self) -> bool:
        return bool(self._memory() <= self._analytic.mem.capacity_bytes)

    def _memory(self) -> float:
        """GPU bytes by the analytic model's accounting, with the staging high-water mark seen."""
        p, m = self.policy, self.model
        g = p.gamma if self.pol.speculative else 0
        lru = self.pol.slots.lru_slots
        resident = self.pol.resident_per_layer - lru / self.L
        positions = float(tree_size(g, p.tree_width, p.tree_levels))
        mem = float(self._analytic.mem.bytes(float(self.workload.batch), positions, resident,
                                             float(self.peak_layer_fetch), lru))
        if p.name in ("eagle", "spmoe", "moespec") and g > 0:
            # the draft model's weights (estimate)
            mem += p.draft_model_ratio * m.resident_bytes
        return mem

    def _header(self) -> Header:
        s = self.system
        return Header(
            source="sim",
            device={"name": s.name, "gpu": s.gpu.name, "host": s.host.name, "link": s.link.name},
            model=self.model.name,
            workload=self.workload.to_dict(),
            policy=self.policy.to_dict(),
            extra={
                "seed": self.seed,
                "mode": "serving" if self.serving else "offline",
                "iterations": self.iterations,
            },
        )


def simulate(
    model="mixtral-8x7b",
    hardware="h100-pcie",
    policy="specmoe",
    batch: int = 64,
    iterations: int = 200,
    seed: int = 0,
    trace: bool = False,
    serving: bool = False,
    rate: float | None = None,
    requests: int = 100,
    arrivals: Sequence[float] | None = None,
    warmup: int = 0,
    options: SimOptions | None = None,
    system=None,
    workload=None,
    params=None,
    **kwargs: Any,
) -> SimResult:
    """Simulate one configuration. Arguments as specmoe.app.api.resolve (gamma, draft_experts,
    acceptance, routing, prompt_len, output_len, policy parameters) plus the run's own.

    system: a System (same as hardware=); workload: a Workload whose batch, lengths, routing and
    acceptance replace those arguments; params: CostParams for the cost model (a calibration).
    """

    hardware = hardware if system is None else system
    if workload is not None:
        kwargs.update(prompt_len=workload.prompt_len, output_len=workload.output_len,
                      routing=workload.routing, acceptance=workload.acceptance)
        batch = workload.batch
    setup = resolve(model=model, hardware=hardware, policy=policy, batch=batch, **kwargs)
    srv = (
        Serving(
            rate=rate,
            requests=requests,
            arrivals=tuple(arrivals) if arrivals is not None else None,
            warmup=warmup,
        )
        if (serving or rate is not None or arrivals is not None)
        else None
    )
    res = Simulator(
        setup,
        iterations=iterations,
        seed=seed,
        trace=trace,
        serving=srv,
        options=options,
        params=params,
    ).run()
    res.interval = sim_interval(setup, res) if params is None else {}
    return res


def sim_interval(setup, res) -> dict[str, Any]:
    """The analytic model's relative p10/p50/p90 band, centred on the simulated numbers.

    The spreads of cost parameters and acceptance move the simulator as they move the analytic
    model (one cost model); the band's shape comes from the analytic propagation, its centre from
    the simulation. Policies the analytic model does not cover get no band (keys None)."""
    keys = [f"{k}_{q}" for k in OUTPUTS for q in ("p10", "p50", "p90")]
    out: dict[str, Any] = dict.fromkeys(keys)
    out["evidence"] = provenance(setup.system, setup.workload.acceptance)
    if setup.policy.name not in ANALYTIC:
        out["evidence"]["interval"] = f"none: the analytic model does not cover {setup.policy.name}"
        return out
    iv = evaluate_intervals(setup.model, setup.system, setup.workload, setup.policy)
    sim = {"tokens_per_s": res.tokens_per_s, "tpot_ms": res.tpot_ms, "ttft_ms": res.ttft_ms}
    for k in OUTPUTS:
        q = np.ravel(iv[k])
        if sim[k] is None or not np.all(np.isfinite(q)) or q[1] <= 0:
            continue
        for name, v in zip(("p10", "p50", "p90"), q, strict=True):
            out[f"{k}_{name}"] = float(sim[k] * v / q[1])
    out["evidence"]["interval"] += " (analytic band, centred on the simulation)"
    return out
