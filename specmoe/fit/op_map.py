"""From a fitting point to the cost model: which CostModel method predicts each measured op, and
which parameters it depends on."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from specmoe.costs.ops import PARAM_NAMES, CostModel, CostParams
from specmoe.inputs.models import spec_from_dims

if TYPE_CHECKING:   # points imports this module's OPS: the type alone comes back
    from specmoe.fit.points import Point

US = 1e-6


# Which parameters each op's time depends on (a parameter is fitted only if some op present
# needs it).
_GEMM = ("gemm_compute_eff", "gemm_half_tokens", "hbm_eff", "kernel_overhead_us")
OP_PARAMS: dict[str, tuple[str, ...]] = {
    "gemm": _GEMM, "expert": _GEMM, "moe": _GEMM, "gate": _GEMM, "lm_head": _GEMM,
    "attn": _GEMM + ("attn_eff",),
    "attn_scores": ("gemm_compute_eff", "attn_eff", "kernel_overhead_us"),
    "h2d": ("link_eff", "transfer_setup_us", "pageable_eff"),
    "cpu_expert": ("cpu_compute_eff", "cpu_mem_eff", "cpu_overhead_us"),
    "attn_prefill": ("gemm_compute_eff", "attn_eff", "kernel_overhead_us"),
}
# Per op class (FitOptions.groups="per-class", for GPU kernels): dense GEMMs, grouped MoE GEMMs,
# decode attention and prefill attention each get their own efficiencies and fixed times; replayed
# benchmarks (trace header `replay`) add the L2 bandwidth, shared by all.
OP_PARAMS_PER_CLASS: dict[str, tuple[str, ...]] = {
    **OP_PARAMS,
    "gemm": _GEMM + ("gemm_tile_half", "split_k_us", "sm_bw_share"),
    "moe": ("moe_compute_eff", "moe_half_tokens", "moe_hbm_eff", "moe_kernel_us", "moe_reread"),
    "expert": ("moe_compute_eff", "moe_half_tokens", "moe_hbm_eff", "moe_kernel_us"),
    "attn_scores": ("attn_eff", "attn_fixed_us", "attn_item_us"),
    "attn_prefill": ("prefill_compute_eff", "prefill_half_head_dim", "prefill_item_us",
                     "prefill_fixed_us"),
}
REPLAY_PARAMS = ("l2_bw_factor",)
# Fixed times that only whole iterations show: per layer, and per distinct expert (an engine that
# loops over experts pays it; op events of one expert cannot tell it from the kernel overhead).
E2E_PARAMS = ("layer_overhead_us", "expert_overhead_us")



@lru_cache(maxsize=512)
def op_spec(dtype_bytes: float, hidden: int = 64, ffn: int = 64, heads: int = 1, kv_heads: int = 1,
          head_dim: int = 64, experts: int = 8, top_k: int = 2, vocab: int = 64, layers: int = 1,
          shared_ffn: int = 0, gated: bool = True):
    """A ModelSpec with just the dims an op needs (one op = one layer's worth)."""
    spec = spec_from_dims("calibration-op", dtype_bytes, hidden, ffn, heads, kv_heads, head_dim,
                          experts, top_k, vocab, layers, shared_ffn)
    return spec if gated else replace(spec, gated_ffn=False)


def _gemm(cm: CostModel, a: np.ndarray) -> np.ndarray:
    m, n, k = a.T
    return cm.dense_gemm(m, n, k)


def _h2d(cm: CostModel, a: np.ndarray) -> np.ndarray:
    nbytes, copies, pinned = a.T
    return np.where(pinned > 0, cm.h2d(nbytes, copies, True), cm.h2d(nbytes, copies, False))


def _attn_scores(cm: CostModel, a: np.ndarray) -> np.ndarray:
    tokens, batch, context = a.T
    return cm.attention_scores(tokens, batch, context)


def _attn_prefill(cm: CostModel, a: np.ndarray) -> np.ndarray:
    _, batch, seq = a.T
    return cm.prefill_attention(batch, seq)


@dataclass(frozen=True)
class Op:
    """How one event category is predicted: the CostModel call and the spec its dims describe."""

    arg_names: tuple[str, ...]
    spec: Callable[..., Any]
    call: Callable[[CostModel, np.ndarray], np.ndarray]


OPS: dict[str, Op] = {
    "gemm": Op(("m", "n", "k"), lambda b: op_spec(b), _gemm),
    "expert": Op(
        ("tokens",),
        lambda b, h, f: op_spec(b, hidden=h, ffn=f),
        lambda cm, a: cm.experts(a[:, 0], 1.0),
    ),
    "moe": Op(
        ("pairs", "distinct", "busiest"),
        lambda b, h, f, g=1.0: op_spec(b, hidden=h, ffn=f, gated=bool(g)),
        lambda cm, a: cm.experts(a[:, 0], a[:, 1], a[:, 2]),
    ),
    "cpu_expert": Op(
        ("tokens",), lambda b, h, f: op_spec(b, hidden=h, ffn=f),
        lambda cm, a: cm.cpu_expert(a[:, 0])
    ),
    "attn": Op(
        ("tokens", "batch", "context"),
        lambda b, h, nh, kv, hd: op_spec(b, hidden=h, heads=nh, kv_heads=kv, head_dim=hd),
        lambda cm, a: cm.attention_block(a[:, 0], a[:, 1], a[:, 2]),
    ),
    "attn_scores": Op(
        ("tokens", "batch", "context"),
        lambda b, h, nh, kv, hd: op_spec(b, hidden=h, heads=nh, kv_heads=kv, head_dim=hd),
        _attn_scores,
    ),
    "attn_prefill": Op(
        ("tokens", "batch", "seq"),
        lambda b, h, nh, kv, hd: op_spec(b, hidden=h, heads=nh, kv_heads=kv, head_dim=hd),
        _attn_prefill,
    ),
    "gate": Op(
        ("tokens",),
        lambda b, h, e: op_spec(b, hidden=h, experts=e),
        lambda cm, a: cm.router_and_shared(a[:, 0]),
    ),
    "lm_head": Op(
        ("tokens",), lambda b, h, v: op_spec(b, hidden=h, vocab=v),
        lambda cm, a: cm.lm_head(a[:, 0])
    ),
    "h2d": Op(("bytes", "chunks", "pinned"), lambda: op_spec(2.0), _h2d),
}


class OpPredictor:
    """Predicted seconds of every point for given CostParams, one CostModel per (op, dims) group."""

    def __init__(self, points: Sequence[Point], system, replay: bool = False):
        self.system = system
        self.replay = replay
        self.n = len(points)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(points):
            groups.setdefault((p.cat, p.dims), []).append(i)
        self.groups = [(cat, OPS[cat].spec(*dims), np.asarray(idx),
                        np.asarray([points[i].args for i in idx], dtype=float))
                       for (cat, dims), idx in groups.items()]

    def __call__(self, params: CostParams) -> np.ndarray:
        out = np.empty(self.n)
        for cat, spec, idx, args in self.groups:
            out[idx] = OPS[cat].call(CostModel(spec, self.system, params, replay=self.replay), args)
        return out


def param_map(groups: str = "shared", replay: bool = False) -> dict[str, tuple[str, ...]]:
    """Which parameters each op depends on: one GEMM group for all ("shared", the engine traces'
    default) or a group per op class ("per-class"); replayed benchmarks add the L2 bandwidth."""
    base = OP_PARAMS_PER_CLASS if groups == "per-class" else OP_PARAMS
    gpu_ops = ("gemm", "moe", "expert", "attn_scores", "attn_prefill")
    return {c: v + (REPLAY_PARAMS if replay and c in gpu_ops else ()) for c, v in base.items()}


def params_needed(points: Sequence[Point], pmap: dict | None = None) -> list[str]:
    pmap = pmap or OP_PARAMS
    names = {n for p in points for n in pmap[p.cat]}
    pinned = {p.args[2] for p in points if p.cat == "h2d"}
    if pinned != {0.0, 1.0}:  # pageable_eff is a ratio: only copies of both kinds separate it
        names.discard("pageable_eff")
    return [n for n in PARAM_NAMES if n in names]
