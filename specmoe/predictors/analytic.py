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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specmoe.costs.memory import Memory
from specmoe.costs.ops import CostModel
from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import ANALYTIC, LRU_POLICIES, Policy
from specmoe.inputs.workload import ExpertCounts, Workload, tau


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


class Analytic:
    """Analytic predictor for one model × system × workload (batch and α may vary per config)."""

    def __init__(self, model, system, workload: Workload | None = None, costs: CostModel | None = None):
        self.model, self.system = model, system
        self.workload = workload or Workload()
        self.costs = costs or CostModel(model, system)
        m = model
        probs = self.workload.routing.inclusion_probs(m.num_experts, m.top_k, m.num_moe_layers)
        self.counts = ExpertCounts(probs)
        self.mem = Memory(model, system, self.workload)

    # ---- building blocks -----------------------------------------------------------------------
    def _nonexpert(self, tokens, batch, context):
        """Attention and dense parts of one forward pass over `tokens` tokens of `batch` sequences."""
        m, c = self.model, self.costs
        attn = m.num_layers * (c.attention_block(tokens, batch, context) + c.layer_fixed())
        dense = m.num_moe_layers * c.router_and_shared(tokens) + c.lm_head(tokens)
        if m.num_layers > m.num_moe_layers:
            dense = dense + (m.num_layers - m.num_moe_layers) * c.dense_ffn(tokens)
        return attn, dense

    def _forward(self, tokens, batch, context, resident, policy: Policy, random_resident=False) -> Forward:
        m, c = self.model, self.costs
        L, k = m.num_moe_layers, m.top_k
        attn, dense = self._nonexpert(tokens, batch, context)
        distinct, missing = self.counts.distinct_and_missing(tokens, resident, random_resident)
        if policy.lru_slots and policy.name in LRU_POLICIES:
            missing = self.counts.missing_with_lru(tokens, resident, policy.lru_slots, L)
        compute = L * c.experts(tokens * k, distinct)
        fetch_one_layer = c.expert_fetch(missing)
        zeros = np.zeros_like(compute)
        if policy.name == "overlap":
            h, prec = policy.prefetch_hit_rate, policy.prefetch_precision
            prefetched = h * missing / prec            # right and wrong guesses both cross the link
            per_layer_compute = (attn + dense + compute) / L
            exposed = (np.maximum(c.expert_fetch(prefetched) - per_layer_compute, 0.0)
                       + c.expert_fetch((1 - h) * missing))
            h2d = (L - 1) * exposed + fetch_one_layer  # nothing runs before layer 0 to hide its fetch
            fetched = (L - 1) * (prefetched + (1 - h) * missing) + missing
            return Forward(attn, dense, compute, h2d, zeros, fetched)
        if policy.name == "cpu":
            return self._cpu_forward(tokens, attn, dense, distinct, missing)
        return Forward(attn, dense, compute, L * fetch_one_layer, zeros, L * missing)

    def _cpu_forward(self, tokens, attn, dense, distinct, missing) -> Forward:
        """Fiddler: a layer's needed non-resident experts run on the CPU when that beats fetching them.

        GPU (fetch, then compute) and CPU work on a layer's experts at once; the layer pays the
        slower of the two, so only CPU time beyond the GPU part shows as `cpu_expert`. Every
        non-resident expert of a layer has the same expected tokens, so the choice is all or none:
        whichever layer time is shorter (a faster link or CPU can then never slow a layer down).
        """
        m, c = self.model, self.costs
        L = m.num_moe_layers
        per_expert = tokens * m.top_k / np.maximum(distinct, 1e-9)

        def layer(n_cpu):
            gpu_share = 1.0 - n_cpu / np.maximum(distinct, 1e-9)
            gpu_compute = c.experts(tokens * m.top_k * gpu_share, distinct - n_cpu)
            fetch = c.expert_fetch(missing - n_cpu)
            cpu_exposed = np.maximum(n_cpu * c.cpu_expert(per_expert) - (fetch + gpu_compute), 0.0)
            return gpu_compute, fetch, cpu_exposed

        fetched, on_cpu = layer(0.0 * missing), layer(missing)
        use_cpu = sum(on_cpu) < sum(fetched)
        gpu_compute, fetch, cpu_exposed = (np.where(use_cpu, a, b) for a, b in zip(on_cpu, fetched, strict=True))
        n_fetched = np.where(use_cpu, 0.0, missing)
        return Forward(attn, dense, L * gpu_compute, L * fetch, L * cpu_exposed, L * n_fetched)

    # ---- residency ------------------------------------------------------------------------------
    def cache_slots(self, batch, gamma, policy: Policy):
        """Experts per layer pinned resident: the policy's count, or as many as fit (costs.memory)."""
        if policy.resident_experts is not None:
            return np.full(np.shape(batch), min(policy.resident_experts, self.model.num_experts))
        return self.mem.max_resident(batch, gamma, self.counts, policy.name, lru=self._lru(policy))

    @staticmethod
    def _lru(policy: Policy) -> int:
        return policy.lru_slots if policy.name in LRU_POLICIES else 0

    # ---- the model -------------------------------------------------------------------------------
    def evaluate(self, policy: Policy, batch=None, gamma=None, draft_experts=None, alpha=None) -> AnalyticResult:
        """Evaluate `policy` over broadcast arrays of batch, γ, N and α (defaults: the policy/workload)."""
        if policy.name not in ANALYTIC:
            raise SpecMoEError(f"policy={policy.name!r}: the analytic model covers {ANALYTIC}; use the simulator")
        w, m = self.workload, self.model
        alpha_given = alpha is not None   # else the workload's acceptance decides τ(γ, N)
        n_given = np.asarray(policy.draft_experts if draft_experts is None else draft_experts, dtype=float)
        # α follows each configuration's own N (acceptance measured or shaped per draft-expert count)
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
        return self._single_pass(policy, batch)

    def _single_pass(self, policy: Policy, batch) -> AnalyticResult:
        ctx = self.workload.mean_context
        zero = np.zeros_like(batch)
        if policy.name in ("caching", "cpu"):
            resident = self.cache_slots(batch, zero, policy)
        else:
            resident = np.zeros(batch.shape, dtype=int)
        fwd = self._forward(batch, batch, ctx, resident, policy)
        staging = self.mem.staging(fwd.fetched_experts / self.model.num_moe_layers, resident, policy.name)
        mem = self.mem.bytes(batch, zero, resident, staging, self._lru(policy))
        return self._result(batch, zero, fwd.total, batch, _parts(fwd, zero), fwd.fetched_experts,
                            mem, resident, policy)

    def _specmoe(self, policy, batch, gamma, n_draft, alpha, alpha_given) -> AnalyticResult:
        m, w, ctx = self.model, self.workload, self.workload.mean_context
        spec = (gamma > 0) & (batch >= policy.spec_min_batch)
        g = np.where(spec, gamma, 0.0)
        resident = n_draft.astype(int)
        random_set = policy.draft_set == "random"
        # Draft: γ steps over B tokens, every token served by the N resident experts (substitution).
        d_attn, d_dense = self._nonexpert(batch, batch, ctx)
        d_distinct = np.minimum(n_draft, self.counts.distinct_and_missing(batch, 0)[0])
        d_expert = m.num_moe_layers * self.costs.experts(batch * m.top_k, np.maximum(d_distinct, 1.0))
        draft_s = g * (d_attn + d_dense + d_expert)
        # Verify: one pass over B(γ+1) positions, each needed non-resident expert fetched once.
        tokens = batch * (g + 1.0)
        fwd = self._forward(tokens, batch, ctx, resident, policy.with_(name="ondemand"), random_set)
        taus = w.acceptance.tau(g, n_draft) if not alpha_given else _tau(alpha, g)
        taus = np.where(spec, taus, 1.0)
        staging = self.mem.staging(fwd.fetched_experts / m.num_moe_layers, resident, policy.name)
        mem = self.mem.bytes(batch, g, resident, staging)
        return self._result(batch, g, draft_s + fwd.total, batch * taus, _parts(fwd, draft_s),
                            fwd.fetched_experts, mem, resident, policy)

    def _result(self, batch, gamma, iteration_s, tokens_per_iter, parts, fetched, mem, resident, policy):
        m, _w = self.model, self.workload
        h2d_bytes = fetched * m.expert_bytes
        ttft = self._prefill_s(batch, resident, policy)
        tpot = iteration_s / (tokens_per_iter / batch)
        return AnalyticResult(
            iteration_s=iteration_s, tokens_per_iteration=tokens_per_iter,
            tokens_per_s=tokens_per_iter / iteration_s, tpot_ms=tpot * 1e3, ttft_ms=ttft * 1e3,
            h2d_bytes_per_iteration=h2d_bytes, h2d_bytes_per_token=h2d_bytes / tokens_per_iter,
            gpu_memory_bytes=mem, fits=mem <= self.mem.capacity_bytes, resident_experts_per_layer=resident,
            breakdown=parts)

    def _prefill_s(self, batch, resident, policy):
        """TTFT: one forward over all prompt tokens (mean context half the prompt)."""
        w = self.workload
        tokens = batch * w.prompt_len
        fwd = self._forward(tokens, batch, w.prompt_len / 2.0, resident,
                            policy.with_(name="ondemand") if policy.name == "specmoe" else policy)
        return fwd.total


def _parts(fwd: Forward, draft_s) -> dict[str, np.ndarray]:
    return {"attention": fwd.attention, "dense": fwd.dense, "expert_compute": fwd.expert_compute,
            "h2d": fwd.h2d, "cpu_expert": fwd.cpu_expert, "draft": np.asarray(draft_s, dtype=float)}


def _tau(alpha, gamma):
    return tau(alpha, gamma)


def _check_arrays(batch, gamma, n_draft, alpha, num_experts):
    checks = [
        (batch < 1, "batch", "must be >= 1"),
        ((gamma < 0) | (gamma > 64), "gamma", "allowed 0..64"),
        ((n_draft < 0) | (n_draft > num_experts), "draft_experts", f"allowed 0..{num_experts} (experts per layer)"),
        ((alpha < 0) | (alpha >= 1), "alpha", "allowed [0, 1)"),
    ]
    for bad, name, allowed in checks:
        if np.any(bad):
            value = {"batch": batch, "gamma": gamma, "draft_experts": n_draft, "alpha": alpha}[name][bad].flat[0]
            raise SpecMoEError(f"{name}={value:g}: {allowed}")


def to_rows(result: AnalyticResult) -> list[dict[str, Any]]:
    """Per-configuration dicts of the scalar outputs (for tables and CSV)."""
    keys = ("iteration_s", "tokens_per_s", "tpot_ms", "ttft_ms", "h2d_bytes_per_token", "gpu_memory_bytes", "fits")
    n = np.size(result.iteration_s)
    cols = {k: np.ravel(getattr(result, k)) for k in keys}
    return [{k: cols[k][i].item() for k in keys} for i in range(n)]
