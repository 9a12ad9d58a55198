"""Decode / verification attention over a static KV cache.

    q          [B, Q, H, Dh]      Q = 1 (decode) or γ+1 (verification) new queries per sequence
    k_cache    [B, S_max, Hkv, Dh], v_cache likewise; H a multiple of Hkv (GQA)
    cache_lens [B] int            valid positions BEFORE the new queries; the new queries' k/v are
                                  already written at cache_lens[b] .. cache_lens[b] + Q - 1
    out        [B, Q, H, Dh]      query i of sequence b sees positions 0 .. cache_lens[b] + i

Softmax scale 1/sqrt(Dh). One program handles one (sequence, kv head, key range): its rows are
the Q x (H/Hkv) queries that share that kv head, so each K/V tile is read once for all of them.
Long caches are split into `num_splits` key ranges (flash-decoding) whose partial results a
second kernel merges; with one split the first kernel writes the output directly.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _runtime as rt
from ._runtime import rne_bf16

LOG2E = 1.4426950408889634


@triton.jit
def _attn_kernel(q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, po_ptr, pml_ptr,
                 Q, S_max, chunk, qk_scale,
                 s_qb, s_qq, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_ob, s_oq, s_oh,
                 G: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_MT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 SPLIT: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                 RNE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1) // NUM_MT
    mt = tl.program_id(1) % NUM_MT
    sp = tl.program_id(2)
    r = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # row = query index * G + head within the group
    qi = r // G
    head = kvh * G + r % G
    rmask = qi < Q
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM

    base = tl.load(lens_ptr + b).to(tl.int32)
    last = base + qi  # last key position each row may see
    start = sp * chunk
    end = tl.minimum(tl.minimum(start + chunk, base + Q), S_max)

    q = tl.load(q_ptr + b * s_qb + qi[:, None] * s_qq + head[:, None] * s_qh + d[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = k_ptr + b * s_kb + kvh * s_kh
    v_base = v_ptr + b * s_vb + kvh * s_vh
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        kt = tl.load(k_base + n[None, :] * s_ks + d[:, None],
                     mask=nmask[None, :] & dmask[:, None], other=0.0)
        v = tl.load(v_base + n[:, None] * s_vs + d[None, :],
                    mask=nmask[:, None] & dmask[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale  # log2 domain
        s = tl.where(nmask[None, :] & (n[None, :] <= last[:, None]), s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # rows with nothing seen yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    if SPLIT:
        slot = ((b * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + sp) * BLOCK_M
        rows = slot + tl.arange(0, BLOCK_M)
        tl.store(po_ptr + rows[:, None] * BLOCK_D + d[None, :], acc)
        tl.store(pml_ptr + rows * 2, m_i)
        tl.store(pml_ptr + rows * 2 + 1, l_i)
    else:
        out = acc / l_i[:, None]
        if RNE:
            out = rne_bf16(out)
        tl.store(o_ptr + b * s_ob + qi[:, None] * s_oq + head[:, None] * s_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _combine_kernel(po_ptr, pml_ptr, o_ptr, Q, num_splits, s_ob, s_oq, s_oh,
                    G: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_MT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, RNE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1) // NUM_MT
    mt = tl.program_id(1) % NUM_MT
    r = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = r // G
    head = kvh * G + r % G
    d = tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    first = (b * tl.num_programs(1) + tl.program_id(1)) * num_splits
    for sp in range(num_splits):
        rows = (first + sp) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_s = tl.load(pml_ptr + rows * 2)
        l_s = tl.load(pml_ptr + rows * 2 + 1)
        a_s = tl.load(po_ptr + rows[:, None] * BLOCK_D + d[None, :])
        m_new = tl.maximum(m, m_s)
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        c_old = tl.exp2(m - m_safe)
        c_new = tl.exp2(m_s - m_safe)
        l_sum = l_sum * c_old + l_s * c_new
        acc = acc * c_old[:, None] + a_s * c_new[:, None]
        m = m_new
    out = acc / l_sum[:, None]
    if RNE:
        out = rne_bf16(out)
    mask = (qi < Q)[:, None] & (d < HEAD_DIM)[None, :]
    tl.store(o_ptr + b * s_ob + qi[:, None] * s_oq + head[:, None] * s_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mask)


def _validate(q, k_cache, v_cache, cache_lens, num_splits, check_lens):
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache),
                    ("cache_lens", cache_lens)):
        rt.check_tensor(name, t)
    rt.check_dtype("q", q, rt.FLOAT_DTYPES)
    if q.dim() != 4:
        raise rt.SpecMoEError(f"q.shape: got {list(q.shape)}; allowed: [B, Q, H, Dh]")
    B, Q, H, Dh = q.shape
    if k_cache.dim() != 4 or k_cache.shape[0] != B or k_cache.shape[3] != Dh:
        raise rt.SpecMoEError(f"k_cache.shape: got {list(k_cache.shape)}; "
                              f"allowed: [{B}, S_max, Hkv, {Dh}]")
    rt.check_shape("v_cache", v_cache, tuple(k_cache.shape))
    Hkv = k_cache.shape[2]
    if Hkv < 1 or H % Hkv:
        raise rt.SpecMoEError(f"k_cache.shape[2] (Hkv): got {Hkv}; allowed: a divisor of "
                              f"q.shape[2] (H={H})")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise rt.SpecMoEError(f"{name}.dtype: got {t.dtype}; allowed: q.dtype ({q.dtype})")
        rt.check_last_dim_contiguous(name, t)
    rt.check_last_dim_contiguous("q", q)
    if Dh > 256:
        raise rt.SpecMoEError(f"q.shape[3] (head_dim): got {Dh}; allowed: <= 256")
    if Q < 1:
        raise rt.SpecMoEError(f"q.shape[1] (queries per sequence): got {Q}; allowed: >= 1")
    rt.check_dtype("cache_lens", cache_lens, rt.INDEX_DTYPES)
    rt.check_shape("cache_lens", cache_lens, (B,))
    rt.check_contiguous("cache_lens", cache_lens)
    if num_splits is not None:
        rt.check_int("num_splits", num_splits, 1)
    S_max = k_cache.shape[1]
    if check_lens and B:
        lo, hi = int(cache_lens.min()), int(cache_lens.max())
        if lo < 0 or hi + Q > S_max:
            raise rt.SpecMoEError(f"cache_lens: got values in {lo}..{hi}; allowed: 0..{S_max - Q}"
                                  f" (cache_lens + Q must fit in S_max={S_max})")


def _default_splits(B: int, Hkv: int, num_mt: int, max_len: int, device) -> int:
    """Enough programs to fill the GPU twice over, each with >= 256 keys."""
    if rt.interpreting():
        return 1
    sms = rt.sm_count(device)
    programs = B * Hkv * num_mt
    return max(1, min(triton.cdiv(2 * sms, max(programs, 1)), triton.cdiv(max_len, 256)))


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              cache_lens: torch.Tensor, *, num_splits: int | None = None,
              max_len: int | None = None, check_lens: bool = True) -> torch.Tensor:
    """out [B, Q, H, Dh]; see module doc.

    num_splits: key ranges per (sequence, kv head); default from the GPU size and max_len.
    max_len: an upper bound of cache_lens + Q (default S_max) used to size the splits.
    check_lens: read cache_lens to check 0 <= cache_lens and cache_lens + Q <= S_max (a host
    sync on a GPU; loads are masked to the cache either way).
    """
    _validate(q, k_cache, v_cache, cache_lens, num_splits, check_lens)
    rt.check_devices(q=q, k_cache=k_cache, v_cache=v_cache, cache_lens=cache_lens)
    B, Q, H, Dh = q.shape
    S_max, Hkv = k_cache.shape[1], k_cache.shape[2]
    G = H // Hkv
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if B == 0 or S_max == 0:
        return out.zero_()
    rows = Q * G
    block_m = max(16, min(64, rt.next_pow2(rows)))
    num_mt = triton.cdiv(rows, block_m)
    block_d = max(16, rt.next_pow2(Dh))
    # K and V tiles, double-buffered, stay under ~64 KB of shared memory for every dtype.
    wide = q.element_size() == 2 and block_d <= 128 and not rt.interpreting()
    block_n = 64 if wide else 32
    max_len = min(S_max, max_len or S_max)
    splits = num_splits or _default_splits(B, Hkv, num_mt, max_len, q.device)
    chunk = triton.cdiv(triton.cdiv(max_len, splits), block_n) * block_n
    splits = triton.cdiv(max_len, chunk)
    split = splits > 1
    po = pml = out  # unused pointers when not split
    if split:
        po = torch.empty(B * Hkv * num_mt * splits * block_m * block_d, dtype=torch.float32,
                         device=q.device)
        pml = torch.empty(B * Hkv * num_mt * splits * block_m * 2, dtype=torch.float32,
                          device=q.device)
    common = {"G": G, "HEAD_DIM": Dh, "NUM_MT": num_mt, "BLOCK_M": block_m, "BLOCK_D": block_d,
                  "RNE": rt.fix_bf16(q.dtype), "num_warps": 4}
    rt.launch(_attn_kernel, (B, Hkv * num_mt, splits), q, k_cache, v_cache, cache_lens, out, po,
              pml, Q, S_max, chunk, LOG2E / math.sqrt(Dh), *q.stride()[:3],
              *k_cache.stride()[:3], *v_cache.stride()[:3], *out.stride()[:3],
              BLOCK_N=block_n, SPLIT=split, UPCAST=rt.upcast_dots(),
              PREC=rt.dot_precision(q.dtype), num_stages=2, **common)
    if split:
        rt.launch(_combine_kernel, (B, Hkv * num_mt), po, pml, out, Q, splits,
                  *out.stride()[:3], **common)
    return out


def attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cache_lens: torch.Tensor, *,
                        compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Plain torch: per sequence, masked softmax over the cache (GQA by repeating kv heads)."""
    _validate(q, k_cache, v_cache, cache_lens, None, True)
    B, Q, H, Dh = q.shape
    G = H // k_cache.shape[2]
    out = torch.empty_like(q)
    for b in range(B):
        n = int(cache_lens[b]) + Q
        k = k_cache[b, :n].to(compute_dtype).repeat_interleave(G, dim=1)  # [n, H, Dh]
        v = v_cache[b, :n].to(compute_dtype).repeat_interleave(G, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[b].to(compute_dtype), k).float() / math.sqrt(Dh)
        pos = torch.arange(n, device=q.device)
        visible = pos[None, :] <= (n - Q + torch.arange(Q, device=q.device))[:, None]
        p = torch.softmax(s.masked_fill(~visible[None], float("-inf")), dim=-1)
        out[b] = torch.einsum("hqk,khd->qhd", p.to(compute_dtype), v).to(q.dtype)
    return out
