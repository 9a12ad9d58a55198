"""Thin op dispatch: torch ops everywhere (they are the references); specmoe.kernels on CUDA.

A Triton kernel is used only when the tensors are on CUDA and TRITON_INTERPRET is not set (the
interpreter is far too slow for an engine; SPECMOE_ENGINE_TRITON=1 forces kernels anyway, e.g. to
test this wiring on a CPU under the interpreter; SPECMOE_ENGINE_TRITON=0 turns them off), the
dtype is one the kernels take (not float64), and the kernel agrees with the torch path on a small
probe the first time it is asked for (a changed signature or layout then falls back to torch with
a warning instead of computing garbage). A run that was meant to use the kernels must not time torch
loops under a header that claims kernels: `require_kernels` (called by Engine.generate after each
run on CUDA) raises when one of KERNELS is wanted but not active, with the reason it fell back.

Kernels used: rmsnorm, attention (decode / verify / prefill over the static KV cache) and
fused_moe (expert-slot indirection: slot_of_expert maps expert ids to slots of the pool).
"""
from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

_checked: dict[str, Callable | None] = {}
_why_not: dict[str, str] = {}  # key -> why the kernel fell back to torch
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNELS = ("rmsnorm", "attention", "fused_moe")  # what the engine runs on Triton when wanted


def _want_triton(t: torch.Tensor) -> bool:
    return _want(t.device.type, t.dtype)


def _want(device_type: str, dtype: torch.dtype) -> bool:
    if dtype not in KERNEL_DTYPES:
        return False
    flag = os.environ.get("SPECMOE_ENGINE_TRITON", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    interp = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
    return device_type == "cuda" and not interp


def _kernel(name: str, t: torch.Tensor, check: Callable[[Callable], bool]) -> Callable | None:
    """specmoe.kernels.<name> if wanted, importable and agreeing with torch on a probe,
    else None."""
    if not _want_triton(t):
        return None
    key = _key(name, t.device, t.dtype)
    if key not in _checked:
        fn = None
        try:
            # from the submodule: once imported,
            # it shadows the package's lazy attribute of that name
            cand = getattr(importlib.import_module(f"specmoe.kernels.{name}"), name)
            if check(cand):
                fn = cand
            else:
                _why_not[key] = "disagrees with the torch path on the probe"
        except Exception as exc:  # noqa: BLE001 - any kernel failure falls back to torch, loudly
            _why_not[key] = f"{type(exc).__name__}: {exc}"
        if fn is None:
            warnings.warn(f"specmoe.engine: kernel {name} not used ({_why_not[key]}); using torch",
                          stacklevel=3)
        _checked[key] = fn
    return _checked[key]


def active_kernels() -> list[str]:
    return sorted(k for k, v in _checked.items() if v is not None)


def _key(name: str, device: torch.device, dtype: torch.dtype) -> str:
    return f"{name}@{torch.device(device).type}:{dtype}"


def wanted_kernels(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """The kernels the engine should be running for tensors of this device and dtype."""
    return list(KERNELS) if _want(torch.device(device).type, dtype) else []


def require_kernels(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """Raise SpecMoEError unless every wanted kernel ran on Triton; -> the active kernel keys.

    Call after a forward pass has exercised them (a warm-up): a kernel never asked for yet is
    reported as not run."""
    from specmoe.errors import SpecMoEError

    missing = {}
    for name in wanted_kernels(device, dtype):
        key = _key(name, torch.device(device), dtype)
        if _checked.get(key) is None:
            missing[name] = _why_not.get(key, "never called")
    if missing:
        why = "; ".join(f"{k}: {v}" for k, v in missing.items())
        raise SpecMoEError(f"kernels {sorted(missing)} wanted on {torch.device(device).type} "
                           f"{str(dtype).replace('torch.', '')} but not running on Triton ({why}); "
                           "fix them or set SPECMOE_ENGINE_TRITON=0 to time the torch path on "
                           "purpose")
    return active_kernels()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 if a.dtype == torch.float32 else 3e-2
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


def _randn(g: torch.Generator, like: torch.Tensor, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g, device=like.device) * scale).to(like.dtype)


# ----------------------------------------------------------------------------- norms, rope


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face semantics: normalise in fp32 (fp64 stays fp64), scale after casting back."""
    acc = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    acc = acc * torch.rsqrt(acc.pow(2).mean(-1, keepdim=True) + eps)
    return w * acc.to(x.dtype)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    def check(fn) -> bool:
        g = torch.Generator(device=x.device).manual_seed(0)
        probe = _randn(g, x, 3, x.shape[-1])
        return _close(fn(probe, w, eps)[0], rms_norm_ref(probe, w, eps))

    k = _kernel("rmsnorm", x, check) if w.dtype == x.dtype else None
    if k is None:
        return rms_norm_ref(x, w, eps)
    return k(x.reshape(-1, x.shape[-1]).contiguous(), w, eps)[0].view(x.shape)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Llama/Mixtral/Qwen layout). x [..., D]; cos, sin broadcast to x."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


# ----------------------------------------------------------------------------- attention


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, S, D], mask [B, 1, T, S] bool (True = attend) -> [B, Hq, T,
    D]."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if q.dtype == torch.float64:  # SDPA kernels may not take fp64 everywhere; the math is short
        s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


attention = attention_ref


def cache_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    lens: torch.Tensor, span: int, mask: torch.Tensor) -> torch.Tensor:
    """Queries [B, T, H, D] at positions lens[b] + t over caches [B, S_max, Hkv, D] that already
    hold their K/V; query t of sequence b sees positions 0 .. lens[b] + t. -> [B, T, H, D].
    span (max position + 1) and mask [B, 1, T, span] serve the torch path."""
    def check(fn) -> bool:
        g = torch.Generator(device=q.device).manual_seed(0)
        B, T, S, hkv = 2, 3, 40, k_cache.shape[2]
        H, D = q.shape[2], q.shape[3]
        qp = _randn(g, q, B, T, H, D)
        kc, vc = _randn(g, q, B, S, hkv, D), _randn(g, q, B, S, hkv, D)
        ln = torch.tensor([5, 30], device=q.device)
        pos = ln[:, None] + torch.arange(T, device=q.device)
        m = torch.arange(S, device=q.device)[None, None, None, :] <= pos[:, None, :, None]
        ref = attention_ref(qp.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), m)
        return _close(fn(qp, kc, vc, ln, check_lens=False), ref.transpose(1, 2))

    k = _kernel("attention", q, check)
    if k is not None:
        return k(q.contiguous(), k_cache, v_cache, lens, max_len=span, check_lens=False)
    keys, vals = k_cache[:, :span].transpose(1, 2), v_cache[:, :span].transpose(1, 2)
    return attention_ref(q.transpose(1, 2), keys, vals, mask).transpose(1, 2)


# ----------------------------------------------------------------------------- router, experts


def route(logits: torch.Tensor, top_k: int, norm_topk: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts in fp32, top-k, optional renormalisation -> (weights fp32, ids
    int64)."""
    probs = torch.softmax(
        logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), -1
    )
    w, ids = torch.topk(probs, top_k, dim=-1)
    if norm_topk:
        w = w / w.sum(-1, keepdim=True)
    return w, ids


def expert_ffn(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU expert: x [n, H], w13 [2I, H] (gate rows then up rows), w2 [H, I] -> [n, H]."""
    gate, up = (x @ w13.t()).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2.t()


def moe_ref(x, w13, w2, topk_w, topk_ids, slot_of_expert) -> torch.Tensor:
    """sum_j topk_w[t, j] * FFN_{slot_of_expert[topk_ids[t, j]]}(x[t]), skipping slot -1."""
    slot_ids = slot_of_expert.long()[topk_ids]
    y = torch.zeros_like(x)
    for s in slot_ids.unique().tolist():
        if s < 0:
            continue
        rows, pos = (slot_ids == s).nonzero(as_tuple=True)
        out = expert_ffn(x[rows], w13[s], w2[s])
        y.index_add_(0, rows, (out * topk_w[rows, pos, None]).to(x.dtype))
    return y


def fused_moe_kernel(x: torch.Tensor) -> Callable | None:
    """specmoe.kernels.fused_moe(x, w13, w2, topk_weights, topk_ids, slot_of_expert) or None."""
    def check(fn) -> bool:
        g = torch.Generator(device=x.device).manual_seed(0)
        n, h, i, s, e, k = 5, 32, 16, 3, 4, 2
        xs = _randn(g, x, n, h)
        w13, w2 = _randn(g, x, s, 2 * i, h, scale=h ** -0.5), _randn(g, x, s, h, i, scale=i ** -0.5)
        ids = torch.randint(0, e, (n, k), device=x.device, generator=g)
        tw = torch.rand(n, k, device=x.device, generator=g)
        table = torch.tensor([2, -1, 0, 1], dtype=torch.int32, device=x.device)
        return _close(fn(xs, w13, w2, tw, ids, table, check_values=False),
                      moe_ref(xs, w13, w2, tw, ids, table))

    return _kernel("fused_moe", x, check)
