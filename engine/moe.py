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


def run_slots(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, table: list[int],
              w13: torch.Tensor, w2: torch.Tensor, tracer=None, layer: int | None = None,
              phase: str | None = None, present: set[int] | None = None) -> torch.Tensor:
    """y[t] = sum_j weights[t, j] * FFN_{table[ids[t, j]]}(x[t]); pairs whose slot is -1 are
    skipped (computed elsewhere). table: expert id -> slot of w13 [S, 2I, H] / w2 [S, H, I]; a
    substituted expert simply points at its substitute's slot. present: the expert ids in `ids`
    when the caller knows them already (saves a device sync)."""
    present = set(ids.flatten().tolist()) if present is None else present
    tracer = tracer or NullTracer()
    slot_of = torch.tensor(table, dtype=torch.int32, device=x.device)
    fused = ops.fused_moe_kernel(x)
    if fused is not None:
        tok = tracer.begin()
        y = fused(x.contiguous(), w13, w2, weights.float().contiguous(), ids.contiguous(), slot_of,
                  check_values=False)
        if tracer.enabled:
            used = {table[e] for e in present} - {-1}
            tracer.end(tok, "fused_moe", "expert", layer=layer, phase=phase, tokens=x.shape[0],
                       experts=len(used))
        return y
    slot_ids = slot_of.long()[ids]
    used = sorted({table[e] for e in present} - {-1})
    y = torch.zeros_like(x)
    for s in used:
        tok = tracer.begin()
        rows, pos = (slot_ids == s).nonzero(as_tuple=True)
        out = ops.expert_ffn(x[rows], w13[s], w2[s])
        y.index_add_(0, rows, (out * weights[rows, pos, None]).to(x.dtype))
        if tracer.enabled:
            n, h, i = int(rows.numel()), w2.shape[1], w2.shape[2]
            tracer.end(tok, "expert", "expert", layer=layer, phase=phase, tokens=n, slot=s,
                       flops=6 * n * h * i, shape=[n, h, i])
    return y


class ResidentExperts:
    """Every expert of every layer on the device: a separate draft model, or the no-offload reference."""

    def __init__(self, cfg: MoEConfig, host: list[torch.Tensor], device: torch.device | str,
                 tracer=None) -> None:
        self.cfg = cfg
        self.tracer = tracer or NullTracer()
        i, h, E = cfg.expert_ffn, cfg.hidden, cfg.experts
        self.w13 = [b[:, : 2 * i * h].reshape(E, 2 * i, h).to(device).contiguous() for b in host]
        self.w2 = [b[:, 2 * i * h:].reshape(E, h, i).to(device).contiguous() for b in host]
        self.table = list(range(E))

    def moe(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
            phase: str) -> torch.Tensor:
        return run_slots(x, ids, weights, self.table, self.w13[layer], self.w2[layer], self.tracer,
                         layer, phase)
