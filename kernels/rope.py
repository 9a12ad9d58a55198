"""Rotary position embedding, rotate-half convention (Hugging Face Llama/Mixtral/Qwen):

    inv_freq[i] = 1 / theta^(2i/Dh),  angle = position * inv_freq  (fp32, computed as HF does)
    out[:Dh/2] = x1 cos - x2 sin,     out[Dh/2:] = x2 cos + x1 sin   (x1, x2 = halves of x)

q [T, H, Dh] and k [T, Hkv, Dh] are rotated in one launch (one program per token) into new
tensors; inputs may be strided views (e.g. slices of a fused qkv projection) whose last dim is
contiguous. Math in fp32, results stored in the input dtype.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _runtime as rt
from ._runtime import rne_bf16


@triton.jit
def _rotate(x_ptr, o_ptr, cos, sin, row, H, s_xt, s_xh, s_ot, s_oh,
            HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
            RNE: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    i = tl.arange(0, BLOCK_HALF)
    mask = (h[:, None] < H) & (i[None, :] < HALF)
    src = x_ptr + row * s_xt + h[:, None] * s_xh + i[None, :]
    dst = o_ptr + row * s_ot + h[:, None] * s_oh + i[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    if RNE:
        o1 = rne_bf16(o1)
        o2 = rne_bf16(o2)
    tl.store(dst, o1.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, o2.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, pos_ptr, inv_ptr, H, HKV,
                 s_qt, s_qh, s_kt, s_kh, s_qot, s_qoh, s_kot, s_koh,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HKV: tl.constexpr,
                 BLOCK_HALF: tl.constexpr, RNE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)
    pos = tl.load(pos_ptr + row).to(tl.float32)
    angle = pos * tl.load(inv_ptr + i, mask=i < HALF, other=0.0)
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    _rotate(q_ptr, qo_ptr, cos, sin, row, H, s_qt, s_qh, s_qot, s_qoh, HALF, BLOCK_H, BLOCK_HALF,
            RNE)
    _rotate(k_ptr, ko_ptr, cos, sin, row, HKV, s_kt, s_kh, s_kot, s_koh, HALF, BLOCK_HKV,
            BLOCK_HALF, RNE)


@functools.lru_cache(maxsize=32)
def inv_freq(head_dim: int, theta: float, device: str) -> torch.Tensor:
    """fp32 [head_dim/2], the same arithmetic as HF's default rotary init."""
    exps = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return (1.0 / (theta ** exps)).to(device)


def _validate(q, k, positions, theta):
    for name, t in (("q", q), ("k", k), ("positions", positions)):
        rt.check_tensor(name, t)
    rt.check_dtype("q", q, rt.FLOAT_DTYPES)
    if q.dim() != 3:
        raise rt.SpecMoEError(f"q.shape: got {list(q.shape)}; allowed: [T, H, Dh]")
    T, _, Dh = q.shape
    if Dh % 2 or Dh < 2:
        raise rt.SpecMoEError(f"q.shape[2] (head_dim): got {Dh}; allowed: an even number >= 2")
    if k.dim() != 3 or k.shape[0] != T or k.shape[2] != Dh:
        raise rt.SpecMoEError(f"k.shape: got {list(k.shape)}; allowed: [{T}, Hkv, {Dh}]")
    if k.dtype != q.dtype:
        raise rt.SpecMoEError(f"k.dtype: got {k.dtype}; allowed: q.dtype ({q.dtype})")
    rt.check_dtype("positions", positions, rt.INDEX_DTYPES)
    rt.check_shape("positions", positions, (T,))
    rt.check_contiguous("positions", positions)
    rt.check_last_dim_contiguous("q", q)
    rt.check_last_dim_contiguous("k", k)
    rt.check_positive_float("theta", theta)


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_rot [T, H, Dh], k_rot [T, Hkv, Dh]) in new contiguous tensors; see module doc."""
    _validate(q, k, positions, theta)
    rt.check_devices(q=q, k=k, positions=positions)
    T, H, Dh = q.shape
    Hkv = k.shape[1]
    qo, ko = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(
        k.shape, dtype=k.dtype, device=k.device)
    if T:
        inv = inv_freq(Dh, float(theta), str(q.device))
        rt.launch(_rope_kernel, (T,), q, k, qo, ko, positions, inv, H, Hkv,
                  q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                  qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1),
                  HALF=Dh // 2, BLOCK_H=rt.next_pow2(H), BLOCK_HKV=rt.next_pow2(Hkv),
                  BLOCK_HALF=rt.next_pow2(Dh // 2), RNE=rt.fix_bf16(q.dtype))
    return qo, ko


def rope_reference(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                   theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch: HF apply_rotary_pos_emb with cos/sin in fp32 (no rounding of cos/sin)."""
    _validate(q, k, positions, theta)
    inv = inv_freq(q.shape[2], float(theta), str(q.device))
    freqs = positions.float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rot(x):
        x = x.float()
        x1, x2 = x.chunk(2, dim=-1)
        return (x * cos + torch.cat((-x2, x1), dim=-1) * sin)

    return rot(q).to(q.dtype), rot(k).to(k.dtype)
