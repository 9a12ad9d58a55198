"""What each policy decides, as plans the simulator's processes execute (names as
specmoe.inputs.policies).

A policy sees the routed token counts of a pass (counts[l, e] tokens of MoE layer l on expert e)
and returns a PassPlan: grouped GPU expert time per layer, which experts are fetched at the gate
(demand), which were prefetched earlier, which run on the CPU. It keeps its own state: resident
experts (cache, draft set) and, for speculative policies, how drafting runs. Timing and contention
are the processes' business (simulator.py); per-op times come from specmoe.costs.

Parameters that stand for accuracy the simulator cannot derive (prediction hit rate, acceptance)
are inputs: Policy.prefetch_hit_rate, the workload's Acceptance, SimOptions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specmoe.predictors.analytic import shallow_first
from specmoe.predictors.sim.entities import PREFETCH, ExpertSlots


@dataclass
class PassPlan:
    """One forward pass of the target model over `tokens` positions of `batch` sequences."""

    phase: str                         # prefill | decode | draft | verify
    tokens: int
    batch: int
    context: float                     # mean cached positions per sequence
    expert_s: np.ndarray               # [L] grouped GPU expert compute per MoE layer
    demand: np.ndarray                 # [L] experts fetched when the layer's gate has run
    demand_mask: np.ndarray | None = None     # [L, E] which (for the trace)
    prefetch: np.ndarray | None = None        # [L] fetched during the previous layer
    prefetch_mask: np.ndarray | None = None
    pending: dict = field(default_factory=dict)   # MoE layer -> (fetch under way, experts)
    cpu: dict | None = None            # MoE layer -> (durations, tokens, ids, activation bytes)
    pairs: np.ndarray | None = None    # [L] token-expert pairs computed on the GPU


class SimPolicy:
    """ondemand: every needed expert is fetched when its layer's gate has run."""

    speculative = False

    def __init__(self, sim):
        self.sim = sim
        self.policy = sim.policy
        self.slots = self._make_slots()

    # ---- residency ------------------------------------------------------------------------------
    def _make_slots(self) -> ExpertSlots:
        return ExpertSlots(self.sim.L, self.sim.E)

    @property
    def resident_per_layer(self) -> float:
        return self.slots.per_layer

    # ---- one target pass ------------------------------------------------------------------------
    def plan(
        self, counts: np.ndarray, phase: str, tokens: int, batch: int, context: float
    ) -> PassPlan:
        needed = counts > 0
        miss = self._lookup(needed)
        return PassPlan(phase, tokens, batch, context, self._expert_s(counts, needed),
                        miss.sum(axis=1), miss)

    def _lookup(self, needed: np.ndarray) -> np.ndarray:
        """Count hits against the resident set; return the misses."""
        res = self.slots.resident
        self.sim.stats.lookups += int(needed.sum())
        miss = needed & ~res
        self.sim.stats.hits += int(needed.sum()) - int(miss.sum())
        return miss

    def _expert_s(self, counts, used):
        return self.sim.costs.experts(counts.sum(axis=1), used.sum(axis=1))

    def after(self, counts: np.ndarray, phase: str) -> None:
        self.slots.touch(counts)

    # ---- speculation ----------------------------------------------------------------------------
    def gamma_for(self, batch: int) -> int:
        p = self.policy
        return p.gamma if self.speculative and p.gamma > 0 and batch >= p.spec_min_batch else 0

    @property
    def alpha(self) -> float:
        return self.sim.alpha


class Overlap(SimPolicy):
    """overlap: while layer l runs, prefetch layer l+1's predicted experts; each needed expert is
    predicted with probability prefetch_hit_rate, the rest fetched on demand. A layer with no
    layer before it (the first decoder layer) has nothing to prefetch during: on demand."""

    def plan(self, counts, phase, tokens, batch, context):
        plan = super().plan(counts, phase, tokens, batch, context)
        self._split_prefetch(plan, self.policy.prefetch_hit_rate)
        return plan

    def _split_prefetch(self, plan: PassPlan, hit_rate: float) -> None:
        miss = plan.demand_mask
        hit = self.sim.rng.random(miss.shape) < hit_rate if hit_rate < 1.0 else np.ones_like(miss)
        pre = miss & hit & self.sim.prefetchable[:, None]
        plan.prefetch_mask, plan.demand_mask = pre, miss & ~pre
        plan.prefetch, plan.demand = pre.sum(axis=1), plan.demand_mask.sum(axis=1)
        prec = self.policy.prefetch_precision
        if prec < 1.0:   # wrong guesses: fetched, never used, bounded by the experts not needed
            spare = (~(plan.demand_mask | pre)).sum(axis=1)
            wrong = self.sim.rng.poisson(plan.prefetch * (1.0 - prec) / prec)
            plan.prefetch = plan.prefetch + np.minimum(wrong, spare)


def hot_mask(probs: np.ndarray, n) -> np.ndarray:
    """[L, E] mask of the n[l] most probable experts of each layer."""
    n = np.broadcast_to(np.asarray(n, dtype=int), (probs.shape[0],))
    rank = np.argsort(np.argsort(-probs, axis=1, kind="stable"), axis=1, kind="stable")
    return rank < n[:, None]


class Caching(SimPolicy):
    """caching: the hottest `resident_experts` per layer pinned (or as many as fit), plus
    `lru_slots` slots shared by all layers for the most recently used others."""

    def _make_slots(self):
        s = self.sim
        return ExpertSlots(s.L, s.E, hot_mask(s.probs, s.cache_slots()), self.policy.lru_slots)


class Cpu(SimPolicy):
    """cpu (Fiddler): the hottest experts resident (as many as fit); a needed non-resident expert
    runs on the CPU when cpu_expert(its tokens) < expert_fetch(1), else it is fetched. The CPU
    work (activations down, experts, results up) runs alongside the GPU's fetch-then-compute."""

    def _make_slots(self):
        s = self.sim
        return ExpertSlots(s.L, s.E, hot_mask(s.probs, s.cache_slots()))

    def after(self, counts, phase):
        pass                                   # static placement

    def plan(self, counts, phase, tokens, batch, context):
        s = self.sim
        needed = counts > 0
        miss = self._lookup(needed)
        cpu_s = s.costs.cpu_expert(counts)
        on_cpu = miss & (cpu_s < s.fetch_s)
        gpu = needed & ~on_cpu
        fetch = miss & ~on_cpu
        plan = PassPlan(
            phase,
            tokens,
            batch,
            context,
            self._expert_s(np.where(gpu, counts, 0), gpu),
            fetch.sum(axis=1),
            fetch,
        )
        plan.cpu = {}
        for l in np.flatnonzero(on_cpu.any(axis=1)):
            ids = np.flatnonzero(on_cpu[l])
            toks = counts[l, ids]
            plan.cpu[int(l)] = (
                cpu_s[l, ids].tolist(),
                toks,
                ids,
                float(toks.sum()) * s.act_bytes_per_token,
            )
        return plan


class Fate(Overlap):
    """fate: cross-layer gate prediction prefetches the next layer (prefetch_hit_rate), plus a
    cache whose pinned slots favour shallow layers (layer l gets a share ∝ L − l of the same
    total), and `lru_slots` shared LRU slots."""

    def _make_slots(self):
        s = self.sim
        cap = shallow_first(s.cache_slots() * s.L, s.L, s.E)
        return ExpertSlots(s.L, s.E, hot_mask(s.probs, cap), self.policy.lru_slots)


class SpecMoE(SimPolicy):
    """specmoe: N draft experts per layer resident. Drafting runs the target with them only (a
    token routed elsewhere goes to a resident expert picked by a fixed affinity table, or drops
    that expert when substitution is off); verification over B(γ+1) positions fetches each needed
    non-resident expert once. Draft set: hottemporal (the N most used in the last verification,
    free as they were just fetched), hot (fixed top-N by p) or random (a fixed random set)."""

    speculative = True

    def _make_slots(self):
        s, p = self.sim, self.policy
        n = p.draft_experts
        if p.draft_set == "random":
            keys = s.rng.random((s.L, s.E))
            mask = hot_mask(keys, n)
        else:
            mask = hot_mask(s.probs, n)
        slots = ExpertSlots(s.L, s.E, mask)
        # Affinity table stand-in: each expert's substitute is a fixed pseudo-random resident rank.
        self._affinity = s.rng.integers(0, 1 << 30, size=(s.L, s.E))
        return slots

    def after(self, counts, phase):
        if (
            phase == "verify"
            and self.policy.draft_set == "hottemporal"
            and self.policy.draft_experts
        ):
            score = counts + 0.5 * self.slots.resident           # ties keep the current set
            self.slots.set_resident(hot_mask(score, self.policy.draft_experts))

    def draft(self, counts: np.ndarray, batch: int, context: float, nodes=None):
        """γ draft passes of the target with the draft experts only; no fetches. counts[:, d]: the
        tokens routed at depth d (nodes[d] per sequence; a chain has one), which draft level d+1."""
        s = self.sim
        g = counts.shape[1] - 1
        nodes = np.ones(g + 1, dtype=int) if nodes is None else nodes
        steps = counts[:, :g, :]                                        # [L, γ, E]
        res = self.slots.resident
        kept = steps * res[:, None, :]
        if self.policy.substitution:
            ids = np.sort(
                np.argsort(~res, axis=1, kind="stable")[:, : self.policy.draft_experts], axis=1
            )
            target = np.take_along_axis(ids, self._affinity % ids.shape[1], axis=1)  # [L, E]
            key = (np.arange(s.L)[:, None, None] * g + np.arange(g)[None, :, None]) * s.E + target[
                :, None, :
            ]
            moved = np.where(res[:, None, :], 0, steps)
            kept = kept + np.bincount(
                key.ravel(), weights=moved.ravel(), minlength=kept.size
            ).reshape(kept.shape)
        expert_s = s.costs.experts(kept.sum(axis=2), (kept > 0).sum(axis=2))     # [L, γ]
        zeros = np.zeros(s.L, dtype=int)
        for j in range(g):
            yield from s.forward(
                PassPlan("draft", batch * int(nodes[j]), batch, context, expert_s[:, j], zeros)
            )


class Eagle(SimPolicy):
    """eagle: a separate small draft model on the GPU (draft_model_ratio × the target's resident
    compute per token) proposes γ tokens; verification fetches the target's experts on demand."""

    speculative = True

    def draft(self, counts, batch, context, nodes=None):
        nodes = np.ones(counts.shape[1], dtype=int) if nodes is None else nodes
        for j in range(counts.shape[1] - 1):
            tokens = batch * int(nodes[j])
            d = self.sim.draft_step_s(tokens, batch, context)
            yield from self.sim.gpu_op("draft model step", "draft_step", d, "draft", tokens=tokens)


class SpMoE(Eagle):
    """spmoe: the draft model's gates predict the target's experts (prefetch_hit_rate); while it
    drafts, the predicted experts of MoE layers below cutoff_layer are prefetched, layer by layer
    (pipelined: verification of a layer starts once its prefetch has landed)."""

    def draft(self, counts, batch, context, nodes=None):
        s = self.sim
        needed = counts.sum(axis=1) > 0
        h = self.policy.prefetch_hit_rate
        hit = s.rng.random(needed.shape) < h if h < 1.0 else np.ones_like(needed)
        cutoff = (
            s.L
            if self.policy.cutoff_layer is None
            else int(np.sum(s.moe_layer_ids < self.policy.cutoff_layer))
        )
        pre = needed & hit & ~self.slots.resident
        pre[cutoff:] = False
        self._pending = {
            l: (s.fetch(int(pre[l].sum()), PREFETCH, "draft", l, pre[l]), int(pre[l].sum()))
            for l in range(s.L)
            if pre[l].any()
        }
        self._pre = pre
        yield from super().draft(counts, batch, context, nodes)

    def plan(self, counts, phase, tokens, batch, context):
        plan = super().plan(counts, phase, tokens, batch, context)
        if phase == "verify" and getattr(self, "_pending", None):
            plan.demand_mask = plan.demand_mask & ~self._pre
            plan.demand = plan.demand_mask.sum(axis=1)
            plan.pending, self._pending = self._pending, {}
        return plan


class MoESpec(Eagle):
    """moespec: draft model as eagle; verification keeps only the expert_budget experts with the
    most tokens per layer (the others' tokens skip them), so fewer experts are fetched. Its
    acceptance cost is SimOptions.moespec_acceptance_penalty (relative cut of α; default 0)."""

    def plan(self, counts, phase, tokens, batch, context):
        b = self.policy.expert_budget
        if phase == "verify" and b is not None and b < self.sim.E:
            keep = hot_mask(counts + 1e-9 * self.sim.probs, b)     # ties: the more probable expert
            self.sim.stats.dropped_pairs += int(counts[~keep].sum())
            counts = np.where(keep, counts, 0)
        return super().plan(counts, phase, tokens, batch, context)

    @property
    def alpha(self):
        return self.sim.alpha * (1.0 - self.sim.options.moespec_acceptance_penalty)


POLICY_CLASSES = {
    "ondemand": SimPolicy,
    "overlap": Overlap,
    "caching": Caching,
    "cpu": Cpu,
    "specmoe": SpecMoE,
    "spmoe": SpMoE,
    "moespec": MoESpec,
    "fate": Fate,
    "eagle": Eagle,
}


def alpha_of(workload, policy) -> float:
    """Per-token acceptance the sampler uses (workload.Acceptance.alpha_at)."""
    return workload.acceptance.alpha_at(policy.gamma, policy.draft_experts)
