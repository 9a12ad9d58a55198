"""Closed-form expected time per decode iteration, vectorised over arrays of configurations.

One call evaluates one (model, hardware, routing, policy name) over numpy arrays of batch, γ, N
and α. Per-op times come from `specmoe.costs.ops`; this module only adds expectations (distinct
experts U(n), accepted tokens τ(γ)) and each policy's rule for what overlaps (max) and what is
serial (sum). Layers are treated as alike: per-layer expert counts are averaged over layers.

Per iteration, with T tokens in a forward pass, R resident experts per layer and
NR(T, R) = U(T) − Σ_{e ∈ R} [1 − (1 − p_e)^T] needed experts that must be fetched:
  ondemand/caching  t = fwd(B) + L·[fetch(NR(B, R)) + experts(B)]         R = 0 / cache slots
  overlap           per layer max(compute, h·fetch) + (1 − h)·fetch
  cpu               per layer max(GPU part, CPU part), each needed expert where it is cheaper
  specmoe           γ draft steps with N resident experts (no fetches) + one verification over
                    T = B(γ+1) fetching each needed expert once; B·τ(γ) tokens per iteration
  eagle             γ steps of a separate draft model (draft_model_ratio × the target's resident
                    compute) + an on-demand verification over B(γ+1) positions
  spmoe             eagle, and while it drafts the draft gates' predicted experts
                    (prefetch_hit_rate) of the MoE layers below cutoff_layer are copied, layer by
                    layer: a max-plus recursion over layers with one copy engine, demand copies
                    ahead of prefetches
  moespec           eagle with an expert budget b per layer at verification: min(U(T), b) experts
  fate              overlap's per-layer rule with a shallow-favouring cache (slots ∝ L − l)
Draft trees (policy.tree_width > 1; specmoe.inputs.tree): draft level d runs over B·n_d tokens,
verification over B·(1 + S) positions, τ from the per-level pass probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specmoe.costs.memory import Memory
from specmoe.costs.ops import CostModel, prediction_costs
from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import ANALYTIC, LRU_POLICIES, Policy
from specmoe.inputs.tree import nodes_at, tree_size, tree_tau
from specmoe.inputs.workload import ExpertCounts, Workload, tau

SEPARATE_DRAFT = ("eagle", "spmoe", "moespec")     # a separate draft model on the GPU


@dataclass
class Forward:
    """Time of one forward pass split by category (seconds, arrays)."""

    attention: np.ndarray
    dense: np.ndarray
    expert_compute: np.ndarray
    h2d: np.ndarray
    cpu_expert: np.ndarray
    fetched_experts: np.ndarray   # per pass, all layers

    @property
    def total(self):
        return self.attention + self.dense + self.expert_compute + self.h2d + self.cpu_expert


@dataclass
class AnalyticResult:
    """Arrays over configurations; see `Prediction` for the per-configuration view."""

    iteration_s: np.ndarray
    tokens_per_iteration: np.ndarray
    tokens_per_s: np.ndarray
    tpot_ms: np.ndarray
    ttft_ms: np.ndarray
    h2d_bytes_per_iteration: np.ndarray
    h2d_bytes_per_token: np.ndarray
    gpu_memory_bytes: np.ndarray
    fits: np.ndarray
    resident_experts_per_layer: np.ndarray
    breakdown: dict[str, np.ndarray] = field(default_factory=dict)
    # per phase ("step", "prefill") and op: how many evaluations the measured tables answered
    # ("table") and how many the fitted model ("model")
    op_sources: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


class Analytic:
    """Analytic predictor for one model × system × workload (batch and α may vary per config)."""

    def __init__(
        self, model, system, workload: Workload | None = None, costs: CostModel | None = None
    ):
        self.model, self.system = model, system
        self.workload = workload or Workload()
        self.costs = costs or prediction_costs(model, system)
        m = model
        probs = self.workload.routing.inclusion_probs(m.num_experts, m.top_k, m.num_moe_layers)
        self.counts = ExpertCounts(probs)
        # Token-expert pairs per token: top_k, less the tokens that skip the experts (Duo-LLM).
        self.k_eff = float(probs.sum(axis=1).mean())
        self.small_share = self.workload.routing.module_shares(m.num_moe_layers)[1]
        self.mem = Memory(model, system, self.workload)
        # A layer whose decoder layer has one before it can be prefetched while that one runs.
        self._prefetchable = np.asarray(m.moe_layer_ids) > 0

    # ---- building blocks -----------------------------------------------------------------------
    def _experts_s(self, tokens, distinct, cap=None, pair_share=1.0):
        """Grouped expert time of all MoE layers for `tokens` tokens. Layers are alike (the mean
        profile's U(T) = `distinct`) unless Duo-LLM shares make them differ: then each layer
        profile pays for its own pairs and experts (a skipped layer computes nothing)."""
        L, c = self.model.num_moe_layers, self.costs
        if not self.workload.routing.adaptive:
            return L * c.experts(tokens * self.k_eff * pair_share, distinct)
        per = self.counts.distinct_by_profile(tokens)                       # [P, ...]
        if cap is not None:
            per = np.minimum(per, cap)
        ks = self.counts.probs.sum(axis=1)
        return L * sum(w * c.experts(tokens * k * pair_share, np.maximum(d, 1e-9))
                       for w, k, d in zip(self.counts.weights, ks, per))

    def _nonexpert(self, tokens, batch, context, causal=False):
        """Attention and dense parts of one forward pass over `tokens` tokens of `batch`
        sequences (`causal`: a prefill)."""
        m, c = self.model, self.costs
        attn = m.num_layers * (c.attention_block(tokens, batch, context, causal)
                               + c.layer_fixed())
        dense = m.num_moe_layers * c.router_and_shared(tokens) + c.lm_head(tokens)
        ratio = self.workload.routing.small_module_ratio
        # Duo-LLM: tokens on the small module, per layer
        if ratio > 0 and self.small_share.any():
            tokens = np.asarray(tokens, dtype=float)
            dense = dense + sum(c.small_module(tokens * s, ratio) for s in self.small_share)
        if m.num_layers > m.num_moe_layers:
            dense = dense + (m.num_layers - m.num_moe_layers) * c.dense_ffn(tokens)
        return attn, dense

    def _forward(
        self, tokens, batch, context, resident, policy: Policy, random_resident=False,
        causal=False,
    ) -> Forward:
        m, c = self.model, self.costs
        L = m.num_moe_layers
        attn, dense = self._nonexpert(tokens, batch, context, causal)
        if policy.name == "fate":
            return self._fate_forward(tokens, attn, dense, resident, policy)
        distinct, missing = self.counts.distinct_and_missing(tokens, resident, random_resident)
        if policy.lru_slots and policy.name in LRU_POLICIES:
            missing = self.counts.missing_with_lru(tokens, resident, policy.lru_slots, L)
        compute = self._experts_s(tokens, distinct)
        fetch_one_layer = c.expert_fetch(missing)
        zeros = np.zeros_like(compute)
        if policy.name == "overlap":
            exposed, fetched = self._prefetched_layer(missing, (attn + dense + compute) / L, policy)
            # nothing runs before layer 0 to hide its fetch
            n_pre = self._prefetchable.sum()
            h2d = n_pre * exposed + (L - n_pre) * fetch_one_layer
            return Forward(
                attn, dense, compute, h2d, zeros, n_pre * fetched + (L - n_pre) * missing
            )
        if policy.name == "cpu":
            return self._cpu_forward(tokens, attn, dense, distinct, missing)
        return Forward(attn, dense, compute, L * fetch_one_layer, zeros, L * missing)

    def _prefetched_layer(self, missing, per_layer_compute, policy: Policy):
        """One prefetchable layer under next-layer prediction: (exposed copy time, experts copied).
        A share h of the needed experts was copied during the previous layer (with the wrong
        guesses, 1/precision as many); the rest are fetched once the gate has run."""
        c = self.costs
        h, prec = policy.prefetch_hit_rate, policy.prefetch_precision
        prefetched = h * missing / prec            # right and wrong guesses both cross the link
        exposed = (np.maximum(c.expert_fetch(prefetched) - per_layer_compute, 0.0)
                   + c.expert_fetch((1 - h) * missing))
        return exposed, prefetched + (1 - h) * missing

    def _fate_forward(self, tokens, attn, dense, caps, policy: Policy) -> Forward:
        """fate: overlap's rule per layer, with caps[..., l] pinned experts in MoE layer l. With
        lru_slots, each layer's misses come from the shared-LRU approximation as if every layer
        pinned that layer's count (an approximation: the layers' pins differ)."""
        m, c = self.model, self.costs
        L = m.num_moe_layers
        caps = np.broadcast_to(caps, np.shape(tokens) + (L,))
        layers = [self.counts.distinct_and_missing(tokens, caps[..., l]) for l in range(L)]
        if policy.lru_slots:
            layers = [(d, self.counts.missing_with_lru(tokens, caps[..., l], policy.lru_slots, L))
                      for l, (d, _) in enumerate(layers)]
        distinct = layers[0][0]
        compute = self._experts_s(tokens, distinct)
        per_layer_compute = (attn + dense + compute) / L
        h2d, fetched = np.zeros_like(compute), np.zeros_like(compute)
        for l, (_, missing) in enumerate(layers):
            if self._prefetchable[l]:
                exposed, copied = self._prefetched_layer(missing, per_layer_compute, policy)
            else:
                exposed, copied = c.expert_fetch(missing), missing
            h2d, fetched = h2d + exposed, fetched + copied
        return Forward(attn, dense, compute, h2d, np.zeros_like(compute), fetched)

    def fate_caps(self, per_layer_slots) -> np.ndarray:
        """[..., L] cache slots per MoE layer: the same total as `per_layer_slots` in every layer,
        split shallow-first (layer l's share ∝ L − l), as the simulator's fate cache."""
        m = self.model
        total = np.asarray(per_layer_slots, dtype=int) * m.num_moe_layers
        uniq, inverse = np.unique(total, return_inverse=True)
        table = np.stack([shallow_first(int(t), m.num_moe_layers, m.num_experts) for t in uniq])
        return table[inverse.reshape(total.shape)]


    def _cpu_forward(self, tokens, attn, dense, distinct, missing) -> Forward:
        """Fiddler: a layer's needed non-resident experts run on the CPU when that beats fetching
        them.

        GPU (fetch, then compute) and CPU work on a layer's experts at once; the layer pays the
        slower of the two, so only CPU time beyond the GPU part shows as `cpu_expert`. Every
        non-resident expert of a layer has the same expected tokens, so the choice is all or none:
        whichever layer time is shorter (a faster link or CPU can then never slow a layer down).
        """
        m, c = self.model, self.costs
        L = m.num_moe_layers
        per_expert = tokens * self.k_eff / np.maximum(distinct, 1e-9)

        def layer(n_cpu):
            gpu_share = 1.0 - n_cpu / np.maximum(distinct, 1e-9)
            gpu_compute = c.experts(tokens * self.k_eff * gpu_share, distinct - n_cpu)
            fetch = c.expert_fetch(missing - n_cpu)
            cpu_exposed = np.maximum(n_cpu * c.cpu_expert(per_expert) - (fetch + gpu_compute), 0.0)
            return gpu_compute, fetch, cpu_exposed

        fetched, on_cpu = layer(0.0 * missing), layer(missing)
        use_cpu = sum(on_cpu) < sum(fetched)
        gpu_compute, fetch, cpu_exposed = (
            np.where(use_cpu, a, b) for a, b in zip(on_cpu, fetched, strict=True)
        )
        n_fetched = np.where(use_cpu, 0.0, missing)
        return Forward(attn, dense, L * gpu_compute, L * fetch, L * cpu_exposed, L * n_fetched)

    # ---- residency ------------------------------------------------------------------------------
    def cache_slots(self, batch, gamma, policy: Policy):
        """Experts per layer pinned resident: the policy's count, or as many as fit
        (costs.memory)."""
        if policy.resident_experts is not None:
            return np.full(np.shape(batch), min(policy.resident_experts, self.model.num_experts))
        return self.mem.max_resident(batch, gamma, self.counts, policy.name, lru=self._lru(policy))

    @staticmethod
    def _lru(policy: Policy) -> int:
        return policy.lru_slots if policy.name in LRU_POLICIES else 0

    # ---- the model -------------------------------------------------------------------------------
    def evaluate(
        self, policy: Policy, batch=None, gamma=None, draft_experts=None, alpha=None
    ) -> AnalyticResult:
        """Evaluate `policy` over broadcast arrays of batch, γ, N and α (defaults: the
        policy/workload)."""
        if policy.name not in ANALYTIC:
            raise SpecMoEError(
                f"policy={policy.name!r}: the analytic model covers {ANALYTIC}; use the simulator"
            )
        w, m = self.workload, self.model
        self.costs.sources.clear()         # counted afresh for this evaluation's op_sources
        alpha_given = alpha is not None  # else the workload's acceptance decides τ(γ, N)
        n_given = np.asarray(
            policy.draft_experts if draft_experts is None else draft_experts, dtype=float
        )
        # α follows each configuration's own N (acceptance measured or shaped per draft-expert
        # count)
        batch, gamma, n_draft = np.broadcast_arrays(
            np.asarray(w.batch if batch is None else batch, dtype=float),
            np.asarray(policy.gamma if gamma is None else gamma, dtype=float), n_given)
        # α is not broadcast with the rest: draws of α (intervals) add a leading axis that only τ
        # needs, so expert counts are not recomputed per draw.
        alpha = np.asarray(w.acceptance.alpha_for(n_given) if alpha is None else alpha, dtype=float)
        if alpha.ndim <= batch.ndim:
            alpha = np.broadcast_to(alpha, np.broadcast_shapes(alpha.shape, batch.shape))
        _check_arrays(batch, gamma, n_draft, alpha, m.num_experts)
        if policy.name == "specmoe":
            return self._specmoe(policy, batch, gamma, n_draft, alpha, alpha_given)
        if policy.name in SEPARATE_DRAFT:
            return self._separate_draft(policy, batch, gamma, n_draft, alpha, alpha_given)
        return self._single_pass(policy, batch)

    def _single_pass(self, policy: Policy, batch) -> AnalyticResult:
        ctx = self.workload.mean_context
        zero = np.zeros_like(batch)
        if policy.name in ("caching", "cpu", "fate"):
            resident = self.cache_slots(batch, zero, policy)
        else:
            resident = np.zeros(batch.shape, dtype=int)
        placed = self.fate_caps(resident) if policy.name == "fate" else resident
        fwd = self._forward(batch, batch, ctx, placed, policy)
        staging = self.mem.staging(
            fwd.fetched_experts / self.model.num_moe_layers, resident, policy.name
        )
        mem = self.mem.bytes(batch, zero, resident, staging, self._lru(policy))
        return self._result(batch, zero, fwd.total, batch, _parts(fwd, zero), fwd.fetched_experts,
                            mem, resident, policy, placed)
    # ---- speculation ---------------------------------------------------------------------------
    def _gate(self, policy, batch, gamma):
        """γ where speculation runs (γ > 0 and batch >= spec_min_batch), else 0."""
        return np.where((gamma > 0) & (batch >= policy.spec_min_batch), gamma, 0.0)

    def _taus(self, policy, g, n_draft, alpha, alpha_given):
        """Tokens per verification: the workload's τ(γ, N) for a chain, the tree's otherwise."""
        acc = self.workload.acceptance
        if policy.tree_width == 1:
            taus = tau(alpha, g) if alpha_given else acc.tau(g, n_draft)
        else:
            if not alpha_given and acc.tau_table:
                alpha = acc.alpha_at(policy.gamma, policy.draft_experts)
            taus = tree_tau(alpha, g, policy.tree_width, policy.tree_levels)
        return np.where(g > 0, taus, 1.0)

    @staticmethod
    def _over_levels(g, policy: Policy, step):
        """Σ_{d=0..γ−1} step(n_d): drafting level d+1 runs over the n_d nodes of level d."""
        if policy.tree_width == 1:
            return g * step(1.0)
        total = np.zeros_like(g)
        for d in range(int(np.max(g, initial=0))):
            n = nodes_at(d, policy.tree_width, policy.tree_levels)
            total = total + np.where(d < g, step(n), 0.0)
        return total

    def _resident_pass(self, tokens, batch, context):
        """One target pass over `tokens` as if every weight were in HBM (a draft model's
        yardstick)."""
        m = self.model
        attn, dense = self._nonexpert(tokens, batch, context)
        distinct = np.minimum(m.num_experts, self.counts.distinct_and_missing(tokens, 0)[0])
        return attn + dense + self._experts_s(tokens, distinct, cap=m.num_experts)

    def _separate_draft(self, policy, batch, gamma, n_draft, alpha, alpha_given) -> AnalyticResult:
        """eagle, spmoe, moespec: a separate draft model on the GPU, the target verifies."""
        m, ctx = self.model, self.workload.mean_context
        g = self._gate(policy, batch, gamma)
        step = lambda n: policy.draft_model_ratio * self._resident_pass(batch * n, batch, ctx)
        draft_s = self._over_levels(g, policy, step)
        size = tree_size(g, policy.tree_width, policy.tree_levels)
        tokens = batch * (1.0 + size)
        if policy.name == "spmoe":
            total, parts, fetched, staging = self._spmoe_verify(
                tokens, batch, ctx, policy, draft_s, g > 0
            )
        else:
            budget = policy.expert_budget if policy.name == "moespec" else None
            fwd = self._budget_forward(tokens, batch, ctx, budget)
            total, parts, fetched = draft_s + fwd.total, _parts(fwd, draft_s), fwd.fetched_experts
            staging = self.mem.staging(fetched / m.num_moe_layers, 0, policy.name)
        taus = self._taus(policy, g, n_draft, alpha, alpha_given)
        zero = np.zeros(batch.shape, dtype=int)
        mem = self.mem.bytes(batch, size, zero, staging)
        # draft weights
        mem = mem + np.where(g > 0, policy.draft_model_ratio * m.resident_bytes, 0.0)
        return self._result(batch, g, total, batch * taus, parts, fetched, mem, zero, policy)

    def _budget_forward(self, tokens, batch, context, budget) -> Forward:
        """Verification fetching on demand; with an expert budget b (moespec) only the b experts
        with the most tokens per layer run: min(U(T), b) experts, and the token-expert pairs they
        keep are at least T·k·b/U(T) (equal loads) and T·Σ_{top b} p (large T)."""
        m, c = self.model, self.costs
        L, k = m.num_moe_layers, self.k_eff
        attn, dense = self._nonexpert(tokens, batch, context)
        distinct, _ = self.counts.distinct_and_missing(tokens, 0)
        share, cap = 1.0, None
        if budget is not None:
            share = np.minimum(
                1.0,
                np.maximum(
                    self.counts.top_mass(budget) / k,
                    np.minimum(1.0, budget / np.maximum(distinct, 1e-9)),
                ),
            )
            distinct, cap = np.minimum(distinct, budget), budget
            if self.workload.routing.adaptive:        # the budget binds per layer profile
                per = np.minimum(self.counts.distinct_by_profile(tokens), budget)
                distinct = np.tensordot(self.counts.weights, per, axes=1)
        compute = self._experts_s(tokens, distinct, cap=cap, pair_share=share)
        zeros = np.zeros_like(compute)
        return Forward(attn, dense, compute, L * c.expert_fetch(distinct), zeros, L * distinct)

    def _spmoe_verify(self, tokens, batch, context, policy, draft_s, spec):
        """spmoe's verification with the experts prefetched during drafting.

        The copy engine starts the prefetch (h·NR experts of each MoE layer below the cutoff, in
        layer order) with the draft; verification of a layer waits for its gate, its demand copies
        (the (1 − h)·NR not predicted; they overtake prefetches still queued, delaying them) and its
        prefetch. Per layer: g = t + attention + gate; prefetch done F = (l+1)·p·f + shift
        (+ the layer's demand if the prefetch was not done by g); t = max(g + d·f, F) + experts.
        Exact up to one expert copy per preemption (a copy in flight finishes first)."""
        m, c = self.model, self.costs
        L = m.num_moe_layers
        attn_l = c.attention_block(tokens, batch, context) + c.layer_fixed()
        gate = c.router_and_shared(tokens)
        dense_l = c.dense_ffn(tokens) if m.num_layers > L else 0.0
        distinct, missing = self.counts.distinct_and_missing(tokens, 0)
        experts = self._experts_s(tokens, distinct) / L       # layers alike in the recursion
        f = c.expert_fetch(1)
        ids = np.asarray(m.moe_layer_ids)
        cut = L if policy.cutoff_layer is None else int(np.sum(ids < policy.cutoff_layer))
        pre = np.where(spec, policy.prefetch_hit_rate * missing, 0.0)   # per prefetched layer
        queue_end = cut * pre * f
        t, shift, stall = (
            np.array(draft_s, dtype=float),
            np.zeros_like(missing),
            np.zeros_like(missing),
        )
        moe = set(ids.tolist())
        layer = 0
        for i in range(m.num_layers):
            if i not in moe:
                t = t + attn_l + dense_l
                continue
            demand = missing - pre if layer < cut else missing
            g = t + attn_l + gate
            if layer < cut:
                done = (layer + 1) * pre * f + shift
                done = np.where(done > g, done + demand * f, done)
            else:
                done = np.zeros_like(g)
            shift = shift + np.where(queue_end + shift > g, demand * f, 0.0)
            ready = np.maximum(g + demand * f, done)
            stall = stall + ready - g
            t = ready + experts
            layer += 1
        t = t + c.lm_head(tokens)
        attn = m.num_layers * attn_l
        dense = L * gate + c.lm_head(tokens) + (m.num_layers - L) * dense_l
        parts = {"attention": attn, "dense": dense, "expert_compute": L * experts, "h2d": stall,
                 "cpu_expert": np.zeros_like(stall), "draft": np.asarray(draft_s, dtype=float)}
        # Prefetched layers wait in HBM for verification, plus one layer's demand copies.
        # (more than one layer's worth: costs.memory's one-layer staging rule does not cover it)
        staging = np.ceil(cut * pre + missing)
        return t, parts, L * missing, staging


    def _specmoe(self, policy, batch, gamma, n_draft, alpha, alpha_given) -> AnalyticResult:
        m, ctx = self.model, self.workload.mean_context
        g = self._gate(policy, batch, gamma)
        resident = n_draft.astype(int)
        random_set = policy.draft_set == "random"

        # a draft level over B·n tokens, served by the N resident experts (substitution)
        def step(n):
            d_attn, d_dense = self._nonexpert(batch * n, batch, ctx)
            d_distinct = np.minimum(n_draft, self.counts.distinct_and_missing(batch * n, 0)[0])
            return (
                d_attn
                + d_dense
                + self._experts_s(batch * n, np.maximum(d_distinct, 1.0), cap=n_draft)
            )

        draft_s = self._over_levels(g, policy, step)
        # Verify: one pass over B(1 + S) positions, each needed non-resident expert fetched once.
        size = tree_size(g, policy.tree_width, policy.tree_levels)
        tokens = batch * (1.0 + size)
        fwd = self._forward(tokens, batch, ctx, resident, policy.with_(name="ondemand"), random_set)
        taus = self._taus(policy, g, n_draft, alpha, alpha_given)
        staging = self.mem.staging(fwd.fetched_experts / m.num_moe_layers, resident, policy.name)
        mem = self.mem.bytes(batch, size, resident, staging)
        return self._result(batch, g, draft_s + fwd.total, batch * taus, _parts(fwd, draft_s),
                            fwd.fetched_experts, mem, resident, policy)

    def _result(
        self,
        batch,
        gamma,
        iteration_s,
        tokens_per_iter,
        parts,
        fetched,
        mem,
        resident,
        policy,
        placed=None,
    ):
        m, _w = self.model, self.workload
        h2d_bytes = fetched * m.expert_bytes
        step = {k: dict(v) for k, v in self.costs.sources.items()}
        ttft = self._prefill_s(batch, resident if placed is None else placed, policy)
        prefill = {k: {s: n - step.get(k, {}).get(s, 0) for s, n in v.items()}
                   for k, v in self.costs.sources.items()}
        tpot = iteration_s / (tokens_per_iter / batch)
        return AnalyticResult(
            iteration_s=iteration_s,
            tokens_per_iteration=tokens_per_iter,
            tokens_per_s=tokens_per_iter / iteration_s,
            tpot_ms=tpot * 1e3,
            ttft_ms=ttft * 1e3,
            h2d_bytes_per_iteration=h2d_bytes,
            h2d_bytes_per_token=h2d_bytes / tokens_per_iter,
            gpu_memory_bytes=mem,
            fits=mem <= self.mem.capacity_bytes,
            resident_experts_per_layer=resident,
            breakdown=parts,
            op_sources={"step": step, "prefill": prefill},
        )

    def _prefill_s(self, batch, resident, policy):
        """TTFT: one forward over all prompt tokens (mean context half the prompt)."""
        w = self.workload
        tokens = batch * w.prompt_len
        speculative = policy.name == "specmoe" or policy.name in SEPARATE_DRAFT
        fwd = self._forward(tokens, batch, w.prompt_len / 2.0, resident,
                            policy.with_(name="ondemand") if speculative else policy, causal=True)
        return fwd.total


def shallow_first(total: int, layers: int, per_layer_max: int) -> np.ndarray:
    """Split `total` cache slots over layers with weights L − l, none above per_layer_max (fate)."""
    w = np.arange(layers, 0, -1, dtype=float)
    cap = np.zeros(layers, dtype=int)
    left = min(total, layers * per_layer_max)
    while left > 0:
        room = cap < per_layer_max
        share = np.floor(left * w * room / (w * room).sum()).astype(int)
        if share.sum() == 0:                    # hand out the remainder one by one, shallow first
            share = np.zeros(layers, dtype=int)
            share[np.flatnonzero(room)[:left]] = 1
        cap = np.minimum(cap + share, per_layer_max)
        left = min(total, layers * per_layer_max) - cap.sum()
    return cap




def _parts(fwd: Forward, draft_s) -> dict[str, np.ndarray]:
    return {"attention": fwd.attention, "dense": fwd.dense, "expert_compute": fwd.expert_compute,
            "h2d": fwd.h2d, "cpu_expert": fwd.cpu_expert, "draft": np.asarray(draft_s, dtype=float)}


def _check_arrays(batch, gamma, n_draft, alpha, num_experts):
    checks = [
        (batch < 1, "batch", "must be >= 1"),
        ((gamma < 0) | (gamma > 64), "gamma", "allowed 0..64"),
        (
            (n_draft < 0) | (n_draft > num_experts),
            "draft_experts",
            f"allowed 0..{num_experts} (experts per layer)",
        ),
        ((alpha < 0) | (alpha >= 1), "alpha", "allowed [0, 1)"),
    ]
    for bad, name, allowed in checks:
        if np.any(bad):
            value = {"batch": batch, "gamma": gamma, "draft_experts": n_draft, "alpha": alpha}[
                name
            ][bad].flat[0]
            raise SpecMoEError(f"{name}={value:g}: {allowed}")
