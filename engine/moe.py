"""MoE compute over device slots, and the simplest expert provider (every expert resident).

An expert provider is what the model's MoE block calls instead of owning expert weights:
    provider.moe(layer, x [n, H], ids [n, k] int64, weights [n, k] fp32, phase) -> y [n, H]
Offloading policies (policies.py) are providers that fetch, cache, substitute or run experts on the
host; all of them end in `run_slots`, which computes the experts already sitting in slots.
"""
from __future__ import annotations

import torch
from specmoe.engine import ops
from specmoe.engine.config import MoEConfig
from specmoe.engine.tracer import NullTracer


def upload_table(values: list[int], device: torch.device) -> torch.Tensor:
    """An int32 table on the device without stalling the host: on CUDA the values go through a
    page-locked staging tensor and a non-blocking copy (a pageable copy would wait for the
    stream, i.e. for this layer's expert copies, before the host could go on)."""
    t = torch.tensor(values, dtype=torch.int32)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def distinct_slots(slot_of: torch.Tensor, ids: torch.Tensor, n_slots: int) -> torch.Tensor:
    """0-d device tensor: how many distinct slots (>= 0) the pairs of `ids` use. No host sync:
    the tracer resolves it when it writes the trace."""
    hit = torch.zeros(n_slots + 1, dtype=torch.bool, device=ids.device)
    hit[(slot_of.long()[ids] + 1).flatten()] = True
    return hit[1:].sum()


def run_slots(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, slot_of: torch.Tensor,
              slots, w13: torch.Tensor, w2: torch.Tensor, tracer=None, layer: int | None = None,
              phase: str | None = None, used: int | None = None) -> torch.Tensor:
    """y[t] = sum_j weights[t, j] * FFN_{slot_of[ids[t, j]]}(x[t]); pairs whose slot is -1 are
    skipped (computed elsewhere). slot_of: int32 [E] on x's device (expert id -> slot of
    w13 [S, 2I, H] / w2 [S, H, I]); a substituted expert simply points at its substitute's slot.
    slots: the slots slot_of may name (host; the torch path loops over them). used: the number of
    distinct slots the pairs use when the caller knows it (else the trace counts it on the device).
    Nothing here reads a device tensor on the host: the per-layer path never stalls on the GPU."""
    tracer = tracer or NullTracer()
    fused = ops.fused_moe_kernel(x)
    if fused is not None:
        tok = tracer.begin(name="fused_moe")
        y = fused(x.contiguous(), w13, w2, weights.float().contiguous(), ids.contiguous(), slot_of,
                  check_values=False)
        if tracer.enabled:
            n, h, i = x.shape[0], w2.shape[1], w2.shape[2]
            k = ids.shape[1] if ids.dim() == 2 else 1
            experts = used if used is not None else distinct_slots(slot_of, ids, w13.shape[0])
            tracer.end(tok, "fused_moe", "moe", layer=layer, phase=phase, tokens=n, top_k=k,
                       experts=experts, shape=[n, h, i])
        return y
    slot_ids = slot_of.long()[ids]
    y = torch.zeros_like(x)
    for s in sorted(set(slots) - {-1}):
        rows, pos = (slot_ids == s).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        tok = tracer.begin(name="expert")
        out = ops.expert_ffn(x[rows], w13[s], w2[s])
        y.index_add_(0, rows, (out * weights[rows, pos, None]).to(x.dtype))
        if tracer.enabled:
            n, h, i = int(rows.numel()), w2.shape[1], w2.shape[2]
            tracer.end(tok, "expert", "expert", layer=layer, phase=phase, tokens=n, slot=s,
                       flops=6 * n * h * i, shape=[n, h, i])
    return y


class ResidentExperts:
    """Every expert of every layer on the device: a separate draft model,
    or the no-offload reference."""

    def __init__(self, cfg: MoEConfig, host: list[torch.Tensor], device: torch.device | str,
                 tracer=None) -> None:
        self.cfg = cfg
        self.tracer = tracer or NullTracer()
        i, h, E = cfg.expert_ffn, cfg.hidden, cfg.experts
        self.w13 = [b[:, : 2 * i * h].reshape(E, 2 * i, h).to(device).contiguous() for b in host]
        self.w2 = [b[:, 2 * i * h:].reshape(E, h, i).to(device).contiguous() for b in host]
        self.table = torch.arange(E, dtype=torch.int32, device=device)

    def moe(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
            phase: str) -> torch.Tensor:
        return run_slots(x, ids, weights, self.table, range(self.cfg.experts), self.w13[layer],
                         self.w2[layer], self.tracer, layer, phase)
