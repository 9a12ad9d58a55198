"""RMSNorm with an optional fused residual add, Hugging Face Llama/Mixtral numerics:

    h = x + residual            (rounded to x.dtype: the new residual stream)
    normed = weight * (h / sqrt(mean(h²) + eps)).to(x.dtype)

Returns (normed, new_residual). Without a residual, new_residual is x itself (the residual stream
after this point is the input), so callers can chain layers the same way either way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _runtime as rt
from ._runtime import rne_bf16


@triton.jit
def _rmsnorm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, hout_ptr, D, eps,
                    HAS_RES: tl.constexpr, BLOCK_D: tl.constexpr, RNE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    x = tl.load(x_ptr + row * D + d, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + row * D + d, mask=mask, other=0.0)
        s = x.to(tl.float32) + r.to(tl.float32)
        if RNE:
            s = rne_bf16(s)
        x = s.to(x.dtype)
        tl.store(hout_ptr + row * D + d, x, mask=mask)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / D + eps)
    n = h * rstd
    if RNE:
        n = rne_bf16(n)
    n = n.to(x.dtype).to(tl.float32)  # HF rounds before the weight multiply
    y = n * tl.load(w_ptr + d, mask=mask, other=0.0).to(tl.float32)
    if RNE:
        y = rne_bf16(y)
    tl.store(y_ptr + row * D + d, y.to(y_ptr.dtype.element_ty), mask=mask)


def _validate(x, weight, eps, residual):
    rt.check_tensor("x", x)
    rt.check_tensor("weight", weight)
    rt.check_dtype("x", x, rt.FLOAT_DTYPES)
    rt.check_dtype("weight", weight, rt.FLOAT_DTYPES)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise rt.SpecMoEError(f"x.shape: got {list(x.shape)}; allowed: [..., D] with D >= 1")
    rt.check_shape("weight", weight, (x.shape[-1],))
    rt.check_positive_float("eps", eps)
    rt.check_contiguous("x", x)
    rt.check_contiguous("weight", weight)
    if residual is not None:
        rt.check_tensor("residual", residual)
        rt.check_shape("residual", residual, tuple(x.shape))
        if residual.dtype != x.dtype:
            raise rt.SpecMoEError(f"residual.dtype: got {residual.dtype}; allowed: x.dtype "
                                  f"({x.dtype})")
        rt.check_contiguous("residual", residual)
    if x.shape[-1] > 65536:
        raise rt.SpecMoEError(f"x.shape[-1]: got {x.shape[-1]}; allowed: <= 65536 (one row per "
                              "program)")


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
            residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, new_residual) for x [..., D]; output dtype x.dtype; see module doc."""
    _validate(x, weight, eps, residual)
    rt.check_devices(x=x, weight=weight, residual=residual)
    D = x.shape[-1]
    rows = x.numel() // D
    y = torch.empty_like(x)
    h = torch.empty_like(x) if residual is not None else x
    if rows:
        block = rt.next_pow2(D)
        res = residual if residual is not None else x  # unused pointer without a residual
        rt.launch(_rmsnorm_kernel, (rows,), x, res, weight, y, h, D, float(eps),
                  HAS_RES=residual is not None, BLOCK_D=block, RNE=rt.fix_bf16(x.dtype),
                  num_warps=min(16, max(1, block // 256)))
    return y, h


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, as Hugging Face LlamaRMSNorm after `hidden = residual + hidden`."""
    _validate(x, weight, eps, residual)
    h = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    hf = h.float()
    n = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight.float() * n.float()).to(x.dtype), h
