"""Tuning the fused MoE kernels' tile configs on a device: time candidates per token count and
write the fastest into the device's JSON file (read back by moe_config.get_fused_moe_config)."""
from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import torch

from . import _runtime as rt
from .fused_moe import fused_moe
from .gating import topk_gating
from .moe_config import shape_key, validate_config, write_configs


def candidate_configs() -> list[dict]:
    """The search space of tune_fused_moe on a GPU (configs a device cannot compile are skipped)."""
    out = []
    for bm, bn, bk, gm, w, s in itertools.product((16, 32, 64, 128), (32, 64, 128), (64, 128),
                                                  (1, 8), (4, 8), (3, 4)):
        out.append({"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": bk, "GROUP_SIZE_M": gm,
                        "num_warps": w, "num_stages": s})
    return out


# Decode sizes (a few tokens per expert: weight-bandwidth bound). BLOCK_SIZE_M 16 (the tl.dot
# minimum), wide K tiles and deep pipelines to keep enough weight bytes in flight; the default
# decode config first. vLLM's tuned H100 Mixtral config at M = 1 is BN64/BK256/8 warps/5 stages
# for a kernel that loads one weight tile per step; ours loads two (w1 and w3), so its shared
# memory per stage is twice that: the nearest ones that fit 227 KB are here. Estimated shared
# memory (stages x (BM*BK + 2*BK*BN) x 2 bytes) stays <= ~210 KB; what a device cannot run is
# skipped by the tuner.
QUICK_TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64)
FULL_TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_QUICK = [  # BLOCK_SIZE_N, BLOCK_SIZE_K, num_warps, num_stages
    (32, 128, 4, 3), (64, 128, 4, 3), (64, 128, 4, 4), (64, 128, 8, 4), (32, 256, 4, 4),
    (32, 256, 8, 5), (64, 256, 8, 3), (64, 64, 4, 4), (128, 64, 4, 4), (128, 128, 8, 3),
    (32, 64, 2, 4), (32, 128, 4, 5)]


def quick_candidates() -> list[dict]:
    """~12 decode-size candidates: a tuning pass that fits in a minute or two on a GPU."""
    return [{"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": bk, "GROUP_SIZE_M": 1,
             "num_warps": w, "num_stages": st} for bn, bk, w, st in _QUICK]


def tune_fused_moe(num_experts: int, hidden: int, inter: int, top_k: int, *,
                   dtype: torch.dtype = torch.bfloat16,
                   token_counts=None, candidates: list[dict] | None = None, reps: int = 10,
                   warmup: int = 2, path: Path | str | None = None, seed: int = 0,
                   verbose: bool = True, quick: bool = False) -> dict:
    """Time every candidate config for each token count and write the fastest per count into the
    device's JSON file (merged with what is there). Returns {T: best config}.

    quick=True: the decode sizes QUICK_TOKEN_COUNTS and quick_candidates() (unless token_counts
    or candidates are given), a minute or two instead of the full 192-config search.

    Inputs: random weights in all num_experts slots, router logits from a seeded normal, so
    routing is random like a real router's. Meant for a GPU; runs under the interpreter too (with
    a tiny shape and candidate list) so the code path is tested on the CPU.
    """
    for name, v in (("num_experts", num_experts), ("hidden", hidden), ("inter", inter)):
        rt.check_int(name, v, 1)
    rt.check_int("top_k", top_k, 1, num_experts)
    dev = "cpu" if rt.interpreting() else "cuda"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = hidden ** -0.5
    w13 = (torch.randn(num_experts, 2 * inter, hidden, generator=gen) * scale).to(dev, dtype)
    w2 = (torch.randn(num_experts, hidden, inter, generator=gen) * inter ** -0.5).to(dev, dtype)
    slots = torch.arange(num_experts, dtype=torch.int32, device=dev)
    if token_counts is None:
        token_counts = QUICK_TOKEN_COUNTS if quick else FULL_TOKEN_COUNTS
    if quick:
        candidates = candidates or quick_candidates()
    candidates = [validate_config(c) for c in (candidates or candidate_configs())]
    best: dict[int, dict] = {}
    flush = 0 if rt.interpreting() else 256 << 20  # evict L2: weights come from HBM in serving
    for T in token_counts:
        x = torch.randn(T, hidden, generator=gen).to(dev, dtype)
        logits = torch.randn(T, num_experts, generator=gen).to(dev, torch.float32)
        w, ids = topk_gating(logits, top_k)
        results = []
        for cfg in candidates:
            run = partial(fused_moe, x, w13, w2, w, ids, slots, config=cfg, check_values=False)
            try:
                times = rt.time_fn(run, reps=reps, warmup=warmup, flush_bytes=flush)
            except Exception as exc:  # noqa: BLE001 - out of resources on this device: skip it
                if verbose:
                    print(f"T={T} skip {cfg}: {type(exc).__name__}")
                continue
            results.append((sorted(times)[len(times) // 2], cfg))
        if not results:
            raise rt.SpecMoEError(f"candidates: none ran for T={T}; allowed: configs this device "
                                  "can compile")
        t_best, best[T] = min(results, key=lambda r: r[0])
        if verbose:
            print(f"T={T}: {t_best * 1e6:.1f} us with {best[T]}")
    write_configs(path, shape_key(num_experts, inter, hidden, top_k, dtype), best)
    return best
