"""Token-to-expert alignment for the fused MoE GEMM.

Each token t picks top_k experts; token-slot i = t * top_k + j names the j-th choice of token t.
The grouped GEMM works on blocks of `block_size` rows that all belong to one expert, so the
token-slots are sorted by expert and each expert's run is padded up to a multiple of block_size
with a sentinel (= num_tokens * top_k, one past the last token-slot):

    sorted_token_ids  [max_padded] int32  token-slot ids, expert by expert, sentinel in the padding
    block_expert      [max_blocks] int32  expert id of each block, -1 past the used blocks
    block_slot        [max_blocks] int32  slot_of_expert[block_expert], -1 past the used blocks
    num_tokens_post_padded [1]     int32  used length of sorted_token_ids (a multiple of block_size)

Within an expert token-slots keep increasing order. Experts whose slot is -1 (not resident in the
GPU expert cache) get no blocks: their token-slots appear nowhere, and the caller handles them.

Two implementations, same output, no host synchronisation in either:
- decode sizes (a few chunks of token-slots): one program, two passes over the routing ids
  (count, then scatter with ranks from a cumulative sum of one-hot rows) and one over the blocks;
  one launch is what matters there.
- larger inputs: four launches parallel over programs. Count per chunk of token-slots (one
  program per chunk), an exclusive prefix over chunks per expert (one program, E-wide vectors,
  num_chunks / ROWS steps), scatter per chunk (rank = prefix + rank inside the chunk, so token-slots
  keep increasing order within an expert), and the block tables per group of blocks. At E = 128,
  T = 65,536, top_k = 8 the single program took ~16k serial steps; here the serial part is the
  prefix's ~256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _runtime as rt


@dataclass(frozen=True)
class MoEAlignment:
    sorted_token_ids: torch.Tensor
    block_expert: torch.Tensor
    block_slot: torch.Tensor
    num_tokens_post_padded: torch.Tensor
    block_size: int
    sentinel: int

    @property
    def max_blocks(self) -> int:
        return self.block_expert.numel()


def max_padded_size(num_slots_routed: int, num_experts: int, block_size: int) -> int:
    """Upper bound of num_tokens_post_padded: each non-empty expert adds < block_size padding,
    and at most min(num_experts, token-slots) experts are non-empty."""
    nonempty = min(num_experts, num_slots_routed)
    bound = num_slots_routed + nonempty * (block_size - 1)
    return max(block_size, triton.cdiv(bound, block_size) * block_size)


def _validate(topk_ids, block_size, num_experts, slot_of_expert, check_values):
    rt.check_tensor("topk_ids", topk_ids)
    rt.check_tensor("slot_of_expert", slot_of_expert)
    rt.check_int("block_size", block_size, 1)
    if block_size & (block_size - 1):
        raise rt.SpecMoEError(f"block_size: got {block_size}; allowed: a power of two")
    rt.check_int("num_experts", num_experts, 1)
    rt.check_dtype("topk_ids", topk_ids, rt.INDEX_DTYPES)
    if topk_ids.dim() != 2:
        raise rt.SpecMoEError(f"topk_ids.shape: got {list(topk_ids.shape)}; allowed: [T, top_k]")
    top_k = topk_ids.shape[1]
    if not 1 <= top_k <= num_experts:
        raise rt.SpecMoEError(f"top_k (topk_ids.shape[1]): got {top_k}; "
                              f"allowed: 1..num_experts ({num_experts})")
    rt.check_contiguous("topk_ids", topk_ids)
    rt.check_dtype("slot_of_expert", slot_of_expert, (torch.int32,))
    rt.check_shape("slot_of_expert", slot_of_expert, (num_experts,))
    rt.check_contiguous("slot_of_expert", slot_of_expert)
    if check_values and topk_ids.numel():
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
        if lo < 0 or hi >= num_experts:
            raise rt.SpecMoEError(f"topk_ids: got values in {lo}..{hi}; "
                                  f"allowed: 0..{num_experts - 1}")
    if check_values and int(slot_of_expert.min()) < -1:
        raise rt.SpecMoEError(f"slot_of_expert: got min {int(slot_of_expert.min())}; "
                              "allowed: -1 (not resident) or a slot index >= 0")


def _empty_alignment(topk_ids, block_size, num_experts):
    dev = topk_ids.device
    n = topk_ids.numel()
    size = max_padded_size(n, num_experts, block_size)
    blocks = size // block_size
    return (torch.empty(size, dtype=torch.int32, device=dev),
            torch.empty(blocks, dtype=torch.int32, device=dev),
            torch.empty(blocks, dtype=torch.int32, device=dev),
            torch.empty(1, dtype=torch.int32, device=dev))


@triton.jit
def _fill_blocks(b, e, slot, starts, ends, counts, numel, max_blocks, sorted_ptr, bexp_ptr,
                 bslot_ptr, BLOCK_SIZE: tl.constexpr):
    """Blocks b: their owning expert and slot (-1 past the last), and the sentinel `numel` in the
    padding rows of each block. Shared by the one-program and the parallel align paths."""
    j = tl.arange(0, BLOCK_SIZE)
    row0 = b * BLOCK_SIZE
    inside = (starts[None, :] <= row0[:, None]) & (row0[:, None] < ends[None, :])
    used = tl.sum(inside.to(tl.int32), axis=1) > 0
    bexp = tl.sum(tl.where(inside, e[None, :], 0), axis=1)
    bslot = tl.sum(tl.where(inside, slot[None, :], 0), axis=1)
    bcount = tl.sum(tl.where(inside, counts[None, :], 0), axis=1)
    bstart = tl.sum(tl.where(inside, starts[None, :], 0), axis=1)
    bmask = b < max_blocks
    tl.store(bexp_ptr + b, tl.where(used, bexp, -1), mask=bmask)
    tl.store(bslot_ptr + b, tl.where(used, bslot, -1), mask=bmask)
    rows = row0[:, None] + j[None, :]
    pad = (rows - bstart[:, None] >= bcount[:, None]) | (~used[:, None])
    tl.store(sorted_ptr + rows, numel + tl.zeros_like(rows), mask=pad & bmask[:, None])


@triton.jit
def _align_kernel(ids_ptr, slot_ptr, sorted_ptr, bexp_ptr, bslot_ptr, ntpp_ptr,
                  numel, num_experts, max_blocks,
                  BLOCK_SIZE: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
                  BLOCK_B: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    slot = tl.load(slot_ptr + e, mask=e < num_experts, other=-1)
    resident = slot >= 0

    # Pass 1: token-slots per expert.
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in range(0, numel, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ids = tl.load(ids_ptr + offs, mask=offs < numel, other=-1).to(tl.int32)
        counts += tl.sum((ids[:, None] == e[None, :]).to(tl.int32), axis=0)
    counts = tl.where(resident, counts, 0)
    padded = (counts + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    tl.store(ntpp_ptr, tl.sum(padded, axis=0))

    # Pass 2: scatter each token-slot to starts[e] + its rank among expert e's token-slots.
    running = starts
    for start in range(0, numel, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ids = tl.load(ids_ptr + offs, mask=offs < numel, other=-1).to(tl.int32)
        hit = ((ids[:, None] == e[None, :]) & resident[None, :]).to(tl.int32)
        rank = tl.cumsum(hit, axis=0) - 1 + running[None, :]
        pos = tl.sum(hit * rank, axis=1)
        tl.store(sorted_ptr + pos, offs, mask=tl.sum(hit, axis=1) > 0)
        running += tl.sum(hit, axis=0)

    # Blocks: owning expert and slot; padding rows of each block get the sentinel. These
    # addresses are disjoint from pass 2's, so the one program needs no barrier.
    for b0 in range(0, max_blocks, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        _fill_blocks(b, e, slot, starts, ends, counts, numel, max_blocks, sorted_ptr, bexp_ptr,
                     bslot_ptr, BLOCK_SIZE)


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, numel, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr):
    """counts[c, e]: token-slots of chunk c routed to expert e."""
    c = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + offs, mask=offs < numel, other=-1).to(tl.int32)
    counts = tl.sum((ids[:, None] == e[None, :]).to(tl.int32), axis=0)
    tl.store(counts_ptr + c * BLOCK_E + e, counts)


@triton.jit
def _prefix_kernel(counts_ptr, slot_ptr, meta_ptr, ntpp_ptr, num_chunks, num_experts,
                   BLOCK_SIZE: tl.constexpr, BLOCK_E: tl.constexpr, ROWS: tl.constexpr):
    """counts[c, e] becomes the token-slots of expert e in chunks before c (in place); meta holds
    each expert's start, end and count (resident experts only)."""
    e = tl.arange(0, BLOCK_E)
    r = tl.arange(0, ROWS)
    running = tl.zeros([BLOCK_E], dtype=tl.int32)
    for r0 in range(0, num_chunks, ROWS):
        rows = r0 + r
        ptrs = counts_ptr + rows[:, None] * BLOCK_E + e[None, :]
        m = (rows[:, None] < num_chunks) & (e[None, :] < BLOCK_E)
        tile = tl.load(ptrs, mask=m, other=0)
        tl.store(ptrs, tl.cumsum(tile, axis=0) - tile + running[None, :], mask=m)
        running += tl.sum(tile, axis=0)
    slot = tl.load(slot_ptr + e, mask=e < num_experts, other=-1)
    counts = tl.where(slot >= 0, running, 0)
    padded = (counts + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE
    ends = tl.cumsum(padded, axis=0)
    tl.store(meta_ptr + e, ends - padded)
    tl.store(meta_ptr + BLOCK_E + e, ends)
    tl.store(meta_ptr + 2 * BLOCK_E + e, counts)
    tl.store(ntpp_ptr, tl.sum(padded, axis=0))


@triton.jit
def _scatter_kernel(ids_ptr, slot_ptr, counts_ptr, meta_ptr, sorted_ptr, numel, num_experts,
                    BLOCK_E: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    resident = tl.load(slot_ptr + e, mask=e < num_experts, other=-1) >= 0
    base = tl.load(meta_ptr + e) + tl.load(counts_ptr + c * BLOCK_E + e)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + offs, mask=offs < numel, other=-1).to(tl.int32)
    hit = ((ids[:, None] == e[None, :]) & resident[None, :]).to(tl.int32)
    rank = tl.cumsum(hit, axis=0) - 1 + base[None, :]
    pos = tl.sum(hit * rank, axis=1)
    tl.store(sorted_ptr + pos, offs, mask=tl.sum(hit, axis=1) > 0)


@triton.jit
def _blocks_kernel(meta_ptr, slot_ptr, sorted_ptr, bexp_ptr, bslot_ptr, numel, num_experts,
                   max_blocks, BLOCK_SIZE: tl.constexpr, BLOCK_E: tl.constexpr,
                   BLOCK_B: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    slot = tl.load(slot_ptr + e, mask=e < num_experts, other=-1)
    starts = tl.load(meta_ptr + e)
    ends = tl.load(meta_ptr + BLOCK_E + e)
    counts = tl.load(meta_ptr + 2 * BLOCK_E + e)
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    _fill_blocks(b, e, slot, starts, ends, counts, numel, max_blocks, sorted_ptr, bexp_ptr,
                 bslot_ptr, BLOCK_SIZE)


PARALLEL_MIN_CHUNKS = 4  # up to this many chunks of token-slots, the one-program kernel


def _align_parallel(topk_ids, slot_of_expert, sorted_ids, bexp, bslot, ntpp, block_size,
                    num_experts, block_e, chunk):
    numel = topk_ids.numel()
    chunks = triton.cdiv(numel, chunk)
    counts = torch.empty(chunks, block_e, dtype=torch.int32, device=topk_ids.device)
    meta = torch.empty(3, block_e, dtype=torch.int32, device=topk_ids.device)
    rt.launch(_count_kernel, (chunks,), topk_ids, counts, numel, BLOCK_E=block_e, CHUNK=chunk)
    rt.launch(_prefix_kernel, (1,), counts, slot_of_expert, meta, ntpp, chunks, num_experts,
              BLOCK_SIZE=block_size, BLOCK_E=block_e, ROWS=max(2, min(64, 4096 // block_e)))
    rt.launch(_scatter_kernel, (chunks,), topk_ids, slot_of_expert, counts, meta, sorted_ids,
              numel, num_experts, BLOCK_E=block_e, CHUNK=chunk)
    block_b = max(16, min(64, 4096 // block_e))
    rt.launch(_blocks_kernel, (triton.cdiv(bexp.numel(), block_b),), meta, slot_of_expert,
              sorted_ids, bexp, bslot, numel, num_experts, bexp.numel(), BLOCK_SIZE=block_size,
              BLOCK_E=block_e, BLOCK_B=block_b)


def moe_align_block_size(topk_ids: torch.Tensor, block_size: int, num_experts: int,
                         slot_of_expert: torch.Tensor, *, check_values: bool = True,
                         parallel: bool | None = None) -> MoEAlignment:
    """Sort token-slots by expert and pad each expert's run to a multiple of block_size.

    topk_ids: int32/int64 [T, top_k], contiguous. slot_of_expert: int32 [num_experts], the GPU
    cache slot holding each expert or -1 when not resident; non-resident experts get no blocks.
    check_values: read topk_ids and slot_of_expert to check their ranges (a host sync on GPU;
    switch off in hot loops once the inputs are known to be good). parallel: force one of the
    two implementations (default: the one-program kernel up to PARALLEL_MIN_CHUNKS chunks).
    """
    _validate(topk_ids, block_size, num_experts, slot_of_expert, check_values)
    rt.check_devices(topk_ids=topk_ids, slot_of_expert=slot_of_expert)
    sorted_ids, bexp, bslot, ntpp = _empty_alignment(topk_ids, block_size, num_experts)
    numel = topk_ids.numel()
    block_e = max(16, rt.next_pow2(num_experts))
    chunk = max(16, min(256, 8192 // block_e))
    if parallel is None:
        parallel = triton.cdiv(numel, chunk) > PARALLEL_MIN_CHUNKS
    if parallel and numel:
        _align_parallel(topk_ids, slot_of_expert, sorted_ids, bexp, bslot, ntpp, block_size,
                        num_experts, block_e, chunk)
        return MoEAlignment(sorted_ids, bexp, bslot, ntpp, block_size, numel)
    rt.launch(_align_kernel, (1,), topk_ids, slot_of_expert, sorted_ids, bexp, bslot, ntpp,
              numel, num_experts, bexp.numel(), BLOCK_SIZE=block_size, BLOCK_E=block_e,
              CHUNK=chunk, BLOCK_B=max(16, min(64, 4096 // block_e)))
    return MoEAlignment(sorted_ids, bexp, bslot, ntpp, block_size, numel)


def moe_align_block_size_reference(topk_ids: torch.Tensor, block_size: int, num_experts: int,
                                   slot_of_expert: torch.Tensor) -> MoEAlignment:
    """Plain-torch alignment with the same output (same order, same sizes)."""
    _validate(topk_ids, block_size, num_experts, slot_of_expert, True)
    sorted_ids, bexp, bslot, ntpp = _empty_alignment(topk_ids, block_size, num_experts)
    numel = topk_ids.numel()
    flat = topk_ids.reshape(-1).long()
    slots = slot_of_expert.long()
    resident = slots[flat] >= 0
    counts = torch.bincount(flat[resident], minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    key = torch.where(resident, flat, torch.full_like(flat, num_experts))
    order = torch.argsort(key, stable=True)[: int(resident.sum())]
    exp_of = key[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=flat.device) - first[exp_of]
    sorted_ids.fill_(numel)
    sorted_ids[starts[exp_of] + rank] = order.to(torch.int32)
    total = int(padded.sum())
    ntpp.fill_(total)
    row0 = torch.arange(bexp.numel(), device=flat.device) * block_size
    owner = torch.searchsorted(ends, row0, right=True).clamp(max=num_experts - 1)
    used = row0 < total
    bexp.copy_(torch.where(used, owner, -1).to(torch.int32))
    bslot.copy_(torch.where(used, slots[owner], -1).to(torch.int32))
    return MoEAlignment(sorted_ids, bexp, bslot, ntpp, block_size, numel)
