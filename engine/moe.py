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


def run_slots(x: torch.Tensor, slot_ids: torch.Tensor, weights: torch.Tensor, w13: torch.Tensor,
              w2: torch.Tensor, slots: list[int], tracer=None, layer: int | None = None,
              phase: str | None = None) -> torch.Tensor:
    """y[t] = sum_j weights[t, j] * FFN_{slot_ids[t, j]}(x[t]); slot -1 = skip the pair.

    `slots` lists the distinct slots present (known on the host already; no device sync here).
    """
    tracer = tracer or NullTracer()
    fused = ops.fused_moe_kernel(x) if x.is_cuda else None
    if fused is not None and slots:
        tok = tracer.begin()
        safe = slot_ids.clamp_min(0)
        y = fused(x, w13, w2, weights * (slot_ids >= 0), safe)
        tracer.end(tok, "fused_moe", "moe", layer=layer, phase=phase, tokens=x.shape[0],
                   experts=len(slots))
        return y
    y = torch.zeros_like(x)
    for s in slots:
        tok = tracer.begin()
        rows, pos = (slot_ids == s).nonzero(as_tuple=True)
        out = ops.expert_ffn(x[rows], w13[s], w2[s])
        y.index_add_(0, rows, (out * weights[rows, pos, None]).to(x.dtype))
        if tracer.enabled:
            n = int(rows.numel())
            tracer.end(tok, "expert", "expert", layer=layer, phase=phase, tokens=n, slot=s,
                       flops=6 * n * w2.shape[1] * w2.shape[2], shape=[n, w2.shape[1], w2.shape[2]])
    return y


class ResidentExperts:
    """Every expert of every layer on the device: a separate draft model, or the no-offload reference."""

    def __init__(self, cfg: MoEConfig, host: list[torch.Tensor], device: torch.device | str,
                 tracer=None) -> None:
        self.cfg = cfg
        self.tracer = tracer or NullTracer()
        i, h = cfg.expert_ffn, cfg.hidden
        self.pool = [b.to(device) for b in host]
        self.w13 = [p[:, : 2 * i * h].view(cfg.experts, 2 * i, h) for p in self.pool]
        self.w2 = [p[:, 2 * i * h:].view(cfg.experts, h, i) for p in self.pool]

    def moe(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
            phase: str) -> torch.Tensor:
        used = sorted(set(ids.flatten().tolist()))
        return run_slots(x, ids, weights, self.w13[layer], self.w2[layer], used, self.tracer,
                         layer, phase)
