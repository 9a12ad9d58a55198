"""Fused MoE: expert-blocked grouped GEMMs over token-slots sorted by expert (moe_align).

Layout (Mixtral w1/w3/w2 naming, weights addressed by GPU cache slot, not expert id):
    x        [T, D]              activations (fp32, fp16 or bf16)
    w13      [num_slots, 2F, D]  rows 0..F-1 are w1 (gate), rows F..2F-1 are w3 (up) of the expert
                                 held in that slot: h = silu(x w1ᵀ) * (x w3ᵀ)
    w2       [num_slots, D, F]   down projection: y = h w2ᵀ
    topk_weights [T, k] float, topk_ids [T, k] int  router output (expert ids 0..E-1)
    slot_of_expert [E] int32     slot of each expert in w13/w2, or -1 when not resident
    out      [T, D]              Σ_j topk_weights[t, j] · y(t, topk_ids[t, j]) over resident experts

Only resident experts contribute. A token-slot (t, j) whose expert has slot -1 adds nothing to
out[t]: the caller must compute it elsewhere (after a fetch, on the CPU, or by substitution) and
add it. `nonresident_mask(topk_ids, slot_of_expert)` says which token-slots those are.

Three launches: gate/up GEMM with SwiGLU fused into the epilogue (writes h [T*k, F]), down GEMM
scaled by the router weight (writes [T*k, D]), and an fp32 sum over the k choices that skips
non-resident ones (writes out). Intermediates are stored in x.dtype, as vLLM does: at large T
they are the kernel's main extra memory traffic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _runtime as rt
from ._runtime import rne_bf16
from .moe_align import MoEAlignment, moe_align_block_size
from .moe_config import get_fused_moe_config, validate_config


@triton.jit
def _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped ordering (Triton matmul tutorial): neighbouring programs share weight tiles in L2."""
    width = GROUP_M * num_pid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, h_ptr, sorted_ptr, bslot_ptr, ntpp_ptr,
                    num_valid, EM, N, K,
                    stride_xm, stride_we, stride_wn, stride_hm,
                    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST: tl.constexpr,
                    PREC: tl.constexpr, RNE: tl.constexpr):
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(EM, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(ntpp_ptr):
        return
    slot = tl.load(bslot_ptr + pid_m).to(tl.int64)
    if slot < 0:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = tl.load(sorted_ptr + offs_m).to(tl.int64)
    tmask = tok < num_valid
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_nw = offs_n % N  # wrap instead of masking weight loads; the store is masked
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + (tok // TOP_K)[:, None] * stride_xm + offs_k[None, :]
    w1_ptrs = w_ptr + slot * stride_we + offs_nw[None, :] * stride_wn + offs_k[:, None]
    w3_ptrs = w1_ptrs + N * stride_wn
    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=tmask[:, None] & kmask[None, :], other=0.0)
        b1 = tl.load(w1_ptrs, mask=kmask[:, None], other=0.0)
        b3 = tl.load(w3_ptrs, mask=kmask[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b1 = b1.to(tl.float32)
            b3 = b3.to(tl.float32)
        acc1 += tl.dot(a, b1, input_precision=PREC)
        acc3 += tl.dot(a, b3, input_precision=PREC)
        a_ptrs += BLOCK_K
        w1_ptrs += BLOCK_K
        w3_ptrs += BLOCK_K
    h = acc1 * tl.sigmoid(acc1) * acc3
    if RNE:
        h = rne_bf16(h)
    h_ptrs = h_ptr + tok[:, None] * stride_hm + offs_n[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=tmask[:, None] & (offs_n[None, :] < N))


@triton.jit
def _down_kernel(h_ptr, w_ptr, c_ptr, topw_ptr, sorted_ptr, bslot_ptr, ntpp_ptr,
                 num_valid, EM, N, K,
                 stride_hm, stride_we, stride_wn, stride_cm,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                 RNE: tl.constexpr):
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(EM, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(ntpp_ptr):
        return
    slot = tl.load(bslot_ptr + pid_m).to(tl.int64)
    if slot < 0:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = tl.load(sorted_ptr + offs_m).to(tl.int64)
    tmask = tok < num_valid
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_nw = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + tok[:, None] * stride_hm + offs_k[None, :]
    w_ptrs = w_ptr + slot * stride_we + offs_nw[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=tmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=kmask[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, b, input_precision=PREC)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc *= tl.load(topw_ptr + tok, mask=tmask, other=0.0).to(tl.float32)[:, None]
    if RNE:
        acc = rne_bf16(acc)
    c_ptrs = c_ptr + tok[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=tmask[:, None] & (offs_n[None, :] < N))


@triton.jit
def _sum_kernel(c_ptr, ids_ptr, slot_ptr, out_ptr, D, num_experts,
                TOP_K: tl.constexpr, BLOCK_D: tl.constexpr, RNE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        e = tl.load(ids_ptr + t * TOP_K + j)
        ok = (e >= 0) & (e < num_experts)
        slot = tl.load(slot_ptr + e, mask=ok, other=-1)
        # Non-resident token-slots were never computed: their rows hold garbage, never read.
        # (d * 0 + slot): a block-shaped mask; scalar & block masks break the interpreter.
        keep = dmask & ((d * 0 + slot) >= 0)
        acc += tl.load(c_ptr + (t * TOP_K + j) * D + d, mask=keep, other=0.0).to(tl.float32)
    if RNE:
        acc = rne_bf16(acc)
    tl.store(out_ptr + t * D + d, acc.to(out_ptr.dtype.element_ty), mask=dmask)


def nonresident_mask(topk_ids: torch.Tensor, slot_of_expert: torch.Tensor) -> torch.Tensor:
    """bool [T, k]: True where topk_ids[t, j] is not resident (slot -1), i.e. the token-slots that
    fused_moe leaves out and the caller must handle."""
    return slot_of_expert[topk_ids.long()] < 0


def _validate(x, w13, w2, topk_weights, topk_ids, slot_of_expert, check_values):
    for name, t in (("x", x), ("w13", w13), ("w2", w2), ("topk_weights", topk_weights),
                    ("topk_ids", topk_ids), ("slot_of_expert", slot_of_expert)):
        rt.check_tensor(name, t)
    rt.check_dtype("x", x, rt.FLOAT_DTYPES)
    if x.dim() != 2:
        raise rt.SpecMoEError(f"x.shape: got {list(x.shape)}; allowed: [T, D]")
    T, D = x.shape
    if w13.dim() != 3 or w13.shape[2] != D or w13.shape[1] % 2:
        raise rt.SpecMoEError(f"w13.shape: got {list(w13.shape)}; allowed: [num_slots, 2*F, {D}] "
                              "(w1 rows then w3 rows)")
    S, F2 = w13.shape[0], w13.shape[1]
    rt.check_shape("w2", w2, (S, D, F2 // 2))
    for name, t in (("w13", w13), ("w2", w2)):
        if t.dtype != x.dtype:
            raise rt.SpecMoEError(f"{name}.dtype: got {t.dtype}; allowed: x.dtype ({x.dtype})")
    rt.check_dtype("topk_ids", topk_ids, rt.INDEX_DTYPES)
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T:
        raise rt.SpecMoEError(f"topk_ids.shape: got {list(topk_ids.shape)}; allowed: [{T}, top_k]")
    rt.check_shape("topk_weights", topk_weights, (T, topk_ids.shape[1]))
    rt.check_dtype("topk_weights", topk_weights, rt.FLOAT_DTYPES)
    rt.check_dtype("slot_of_expert", slot_of_expert, (torch.int32,))
    if slot_of_expert.dim() != 1:
        raise rt.SpecMoEError(f"slot_of_expert.shape: got {list(slot_of_expert.shape)}; "
                              "allowed: [E]")
    E = slot_of_expert.shape[0]
    if topk_ids.shape[1] > E:
        raise rt.SpecMoEError(f"top_k (topk_ids.shape[1]): got {topk_ids.shape[1]}; "
                              f"allowed: 1..{E} (the number of experts, len(slot_of_expert))")
    for name, t in (("x", x), ("w13", w13), ("w2", w2), ("topk_weights", topk_weights),
                    ("topk_ids", topk_ids), ("slot_of_expert", slot_of_expert)):
        rt.check_contiguous(name, t)
    if check_values and E:
        hi = int(slot_of_expert.max())
        lo = int(slot_of_expert.min())
        if lo < -1 or hi >= S:
            raise rt.SpecMoEError(f"slot_of_expert: got values in {lo}..{hi}; allowed: -1 (not "
                                  f"resident) or a slot 0..{S - 1} of w13/w2")


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, slot_of_expert: torch.Tensor, *, config: dict | None = None,
              check_values: bool = True) -> torch.Tensor:
    """Sum over resident routed experts of topk_weight · w2(silu(w1 x) * w3 x); see module doc.

    Token-slots routed to experts with slot_of_expert == -1 contribute nothing (see
    nonresident_mask). config: a tile config (moe_config); default: tuned JSON or default_config.
    check_values: read topk_ids/slot_of_expert to check their ranges (a host sync on a GPU).
    """
    _validate(x, w13, w2, topk_weights, topk_ids, slot_of_expert, check_values)
    rt.check_devices(x=x, w13=w13, w2=w2, topk_weights=topk_weights, topk_ids=topk_ids,
                     slot_of_expert=slot_of_expert)
    T, D = x.shape
    Fi = w13.shape[1] // 2
    E, top_k = slot_of_expert.shape[0], topk_ids.shape[1]
    cfg = validate_config(config) if config is not None else get_fused_moe_config(
        T, E, D, Fi, top_k, x.dtype)
    out = torch.empty_like(x)
    if T == 0:
        return out
    align = moe_align_block_size(topk_ids, cfg["BLOCK_SIZE_M"], E, slot_of_expert,
                                 check_values=check_values)
    h = torch.empty(T * top_k, Fi, dtype=x.dtype, device=x.device)
    c = torch.empty(T * top_k, D, dtype=x.dtype, device=x.device)
    _launch_gemms(x, w13, w2, topk_weights, align, h, c, top_k, cfg)
    block_d = min(1024, rt.next_pow2(D))
    rt.launch(_sum_kernel, (T, triton.cdiv(D, block_d)), c, topk_ids, slot_of_expert, out, D, E,
              TOP_K=top_k, BLOCK_D=block_d, RNE=rt.fix_bf16(x.dtype))
    return out


def _launch_gemms(x, w13, w2, topk_weights, align: MoEAlignment, h, c, top_k, cfg):
    bm, bn, bk = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
    EM = align.sorted_token_ids.numel()
    D, Fi = x.shape[1], h.shape[1]
    common = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": cfg["GROUP_SIZE_M"],
                  "UPCAST": rt.upcast_dots(), "PREC": rt.dot_precision(x.dtype),
                  "RNE": rt.fix_bf16(x.dtype),
                  "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    args = (align.sorted_token_ids, align.block_slot, align.num_tokens_post_padded, align.sentinel)
    grid = (triton.cdiv(EM, bm) * triton.cdiv(Fi, bn),)
    rt.launch(_gate_up_kernel, grid, x, w13, h, *args, EM, Fi, D,
              x.stride(0), w13.stride(0), w13.stride(1), h.stride(0), TOP_K=top_k, **common)
    grid = (triton.cdiv(EM, bm) * triton.cdiv(D, bn),)
    rt.launch(_down_kernel, grid, h, w2, c, topk_weights, *args, EM, D, Fi,
              h.stride(0), w2.stride(0), w2.stride(1), c.stride(0), **common)


def fused_moe_reference(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        slot_of_expert: torch.Tensor, *,
                        compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Plain torch, one expert at a time. compute_dtype=float32: fp32 math with h and each
    weighted expert output rounded to x.dtype where the kernel stores them; compute_dtype=x.dtype:
    torch's native-dtype eager path."""
    _validate(x, w13, w2, topk_weights, topk_ids, slot_of_expert, True)
    Fi = w13.shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    slots = slot_of_expert.tolist()
    for e in torch.unique(topk_ids).tolist():
        if slots[e] < 0:
            continue
        tok, j = torch.nonzero(topk_ids == e, as_tuple=True)
        xe = x[tok].to(compute_dtype)
        w = w13[slots[e]].to(compute_dtype)
        h = (F.silu(xe @ w[:Fi].T) * (xe @ w[Fi:].T)).to(x.dtype).to(compute_dtype)
        y = (h @ w2[slots[e]].to(compute_dtype).T).float() * topk_weights[tok, j].float()[:, None]
        out.index_add_(0, tok, y.to(x.dtype).float())
    return out.to(x.dtype)
