"""Thin op dispatch: torch ops everywhere (they are the references); specmoe.kernels on CUDA.

A Triton kernel is used only when the tensors are on CUDA, TRITON_INTERPRET is not set (the
interpreter is far too slow for an engine; SPECMOE_ENGINE_TRITON=1 forces it anyway) and the kernel
passes a one-time check against its torch reference on a small input (which also catches a
signature that differs from the one assumed here). SPECMOE_ENGINE_TRITON=0 turns kernels off.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

_checked: dict[str, Callable | None] = {}


def _want_triton(device: torch.device) -> bool:
    flag = os.environ.get("SPECMOE_ENGINE_TRITON", "").strip()
    if flag == "0":
        return False
    if flag == "1":
        return True
    interp = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
    return device.type == "cuda" and not interp


def _kernel(name: str, device: torch.device, check: Callable[[Callable], bool]) -> Callable | None:
    """specmoe.kernels.<name> if importable and it agrees with the reference, else None."""
    if not _want_triton(device):
        return None
    key = f"{name}@{device.type}"
    if key not in _checked:
        fn = None
        try:
            import specmoe.kernels as K

            cand = getattr(K, name, None)
            if cand is not None and check(cand):
                fn = cand
        except Exception as exc:  # noqa: BLE001 - any kernel failure falls back to torch, loudly
            warnings.warn(f"specmoe.engine: kernel {name} not used ({type(exc).__name__}: {exc})")
        _checked[key] = fn
    return _checked[key]


def active_kernels() -> list[str]:
    return sorted(k for k, v in _checked.items() if v is not None)


# ----------------------------------------------------------------------------- norms, rope


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face semantics: normalise in fp32 (fp64 stays fp64), scale after casting back."""
    acc = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    acc = acc * torch.rsqrt(acc.pow(2).mean(-1, keepdim=True) + eps)
    return w * acc.to(x.dtype)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    k = _kernel("rms_norm", x.device, lambda fn: _agrees(
        fn(_probe(x, (3, x.shape[-1])), w, eps), rms_norm_ref(_probe(x, (3, x.shape[-1])), w, eps)))
    return k(x, w, eps) if k is not None and x.dtype != torch.float64 else rms_norm_ref(x, w, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Llama/Mixtral/Qwen layout). x [..., D]; cos, sin broadcast to x."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


# ----------------------------------------------------------------------------- attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, S, D], mask [B, 1, T, S] bool (True = attend) -> [B, Hq, T, D]."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if q.dtype == torch.float64:  # SDPA kernels may not take fp64 everywhere; the math is short
        s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ----------------------------------------------------------------------------- router, experts


def route(logits: torch.Tensor, top_k: int, norm_topk: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts in fp32, top-k, optional renormalisation -> (weights fp32, ids int64)."""
    probs = torch.softmax(logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), -1)
    w, ids = torch.topk(probs, top_k, dim=-1)
    if norm_topk:
        w = w / w.sum(-1, keepdim=True)
    return w, ids


def expert_ffn(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU expert: x [n, H], w13 [2I, H] (gate rows then up rows), w2 [H, I] -> [n, H]."""
    gate, up = (x @ w13.t()).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2.t()


def fused_moe_kernel(x: torch.Tensor) -> Callable | None:
    """specmoe.kernels.fused_moe(x, w13, w2, topk_weights, slot_ids) -> y, or None.

    w13 [S, 2I, H] and w2 [S, H, I] are views of the slot pool; slot_ids [N, k] index it.
    """
    def check(fn: Callable) -> bool:
        g = torch.Generator(device=x.device).manual_seed(0)
        n, h, i, s, k = 5, 32, 16, 3, 2
        xs = torch.randn(n, h, device=x.device, generator=g).to(x.dtype)
        w13 = (torch.randn(s, 2 * i, h, device=x.device, generator=g) / h ** 0.5).to(x.dtype)
        w2 = (torch.randn(s, h, i, device=x.device, generator=g) / i ** 0.5).to(x.dtype)
        ids = torch.randint(0, s, (n, k), device=x.device, generator=g)
        tw = torch.rand(n, k, device=x.device, generator=g)
        return _agrees(fn(xs, w13, w2, tw, ids), moe_ref(xs, w13, w2, tw, ids))

    return _kernel("fused_moe", x.device, check) if x.dtype != torch.float64 else None


def moe_ref(x, w13, w2, topk_w, slot_ids) -> torch.Tensor:
    """Reference for the fused kernel: every (token, slot) pair, weighted sum."""
    y = torch.zeros_like(x)
    for s in slot_ids.unique().tolist():
        rows, pos = (slot_ids == s).nonzero(as_tuple=True)
        out = expert_ffn(x[rows], w13[s], w2[s])
        y.index_add_(0, rows, (out * topk_w[rows, pos, None]).to(x.dtype))
    return y


def _probe(x: torch.Tensor, shape) -> torch.Tensor:
    g = torch.Generator(device=x.device).manual_seed(0)
    return torch.randn(shape, device=x.device, generator=g).to(x.dtype)


def _agrees(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 if a.dtype == torch.float32 else 3e-2
    ok = a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)
    if not ok:
        warnings.warn("specmoe.engine: a Triton kernel disagrees with its torch reference; using torch")
    return ok
