"""GPU memory and expert residency: the one accounting the analytic model, the simulator and the
planner use.

Bytes on the GPU = resident (non-expert) weights + KV cache + activations/logits workspace
+ pinned experts in every MoE layer + LRU slots shared by all layers + staging slots that hold
one layer's fetched experts.
What a plan may fill is not the whole HBM: a serving engine keeps to a utilisation limit
(Workload.gpu_memory_utilization, default 0.9 like vLLM's gpu_memory_utilization) and the CUDA
context takes its share before any tensor (CUDA_CONTEXT_GB, a prior: PyTorch's process measured
723 MiB after its first CUDA call, discuss.pytorch.org/t/73021; it varies with driver and GPU).
Staging holds the experts a pass must fetch (needed and not resident), twice over where a
policy prefetches the next layer while this one runs (double buffering). Every policy pays the
same rule, so a policy never looks better for reserving less room than its twin.
"""
from __future__ import annotations

import numpy as np

from specmoe.inputs.policies import DOUBLE_BUFFERED

CUDA_CONTEXT_GB = 0.75


class Memory:
    """GPU memory of one model × system × workload; arrays broadcast over configurations."""

    def __init__(self, model, system, workload):
        self.model, self.workload = model, workload
        self.hbm_bytes = system.gpu.hbm_gb * 1e9
        self.context_bytes = CUDA_CONTEXT_GB * 1e9
        self.capacity_bytes = self.hbm_bytes * workload.gpu_memory_utilization - self.context_bytes

    def explain_capacity(self) -> str:
        """'80 GB × 0.90 utilisation − 0.75 GB CUDA context = 71.25 GB usable'."""
        return (
            f"{self.hbm_bytes / 1e9:g} GB × "
            f"{self.workload.gpu_memory_utilization:.2f} utilisation − "
            f"{self.context_bytes / 1e9:g} GB CUDA context = "
            f"{self.capacity_bytes / 1e9:.2f} GB usable"
        )

    def bytes(self, batch, gamma, resident, staging, lru=0, tp=1):
        """Bytes at batch B, draft length γ, `resident` experts per MoE layer, `staging` slots and
        `lru` slots shared by all layers.

        tp > 1: one GPU of a tensor-parallel group (non-expert weights, KV heads and the logits
        split tp ways); `batch` is then the sequences of its data-parallel group and `resident`
        its own experts (expert parallelism)."""
        m, w = self.model, self.workload
        batch, gamma = np.asarray(batch, dtype=float), np.asarray(gamma, dtype=float)
        kv = batch * (w.prompt_len + w.output_len + gamma + 1) * m.kv_bytes_per_token / tp
        tokens = batch * (gamma + 1)
        # fp32 logits (split tp ways) and activations
        workspace = tokens * (m.vocab_size * 4 / tp + 8 * m.hidden_size * m.dtype_bytes)
        experts = (
            np.asarray(resident) * m.num_moe_layers + np.asarray(staging) + lru
        ) * m.expert_bytes
        return m.resident_bytes / tp + kv + workspace + experts + self.small_module_bytes

    @property
    def small_module_bytes(self) -> float:
        """Duo-LLM's small FFN per MoE layer, resident (workload.Routing.small_module_ratio)."""
        r = self.workload.routing
        if not (r.small_share and r.small_module_ratio):
            return 0.0
        return self.model.num_moe_layers * r.small_module_ratio * self.model.expert_bytes

    def staging(self, missing_per_layer, resident, policy_name: str):
        """Slots for one layer's fetched experts: ⌈expected missing⌉, ×2 when double-buffered."""
        e = self.model.num_experts
        slots = np.minimum(
            np.ceil(np.asarray(missing_per_layer, dtype=float)), e - np.asarray(resident)
        )
        return slots * (2 if policy_name in DOUBLE_BUFFERED else 1)

    def max_resident(self, batch, gamma, counts, policy_name: str, tokens=None, lru: int = 0):
        """Most experts per layer that fit with their staging (0..E);
        `counts` gives U(n) (ExpertCounts).

        Staging shrinks as more experts stay resident, so every R = 0..E is checked at once."""
        e = self.model.num_experts
        batch = np.asarray(batch, dtype=float)
        tokens = batch if tokens is None else np.asarray(tokens, dtype=float)
        r = np.arange(e + 1)
        shape = np.broadcast_shapes(batch.shape, np.shape(gamma), tokens.shape)
        t = np.broadcast_to(tokens, shape)[..., None] * np.ones(e + 1)
        _, missing = counts.distinct_and_missing(t, np.broadcast_to(r, t.shape))
        need = self.bytes(np.asarray(batch)[..., None], np.asarray(gamma)[..., None], r,
                          self.staging(missing, r, policy_name), lru)
        fits = need <= self.capacity_bytes
        # Largest R that fits; 0 when none does (the caller's `fits` check then reports it).
        return np.where(fits.any(axis=-1), e - np.argmax(fits[..., ::-1], axis=-1), 0).astype(int)
