"""Microbenchmarks for calibration: each measured configuration becomes one trace event.

They time the ops the engine itself runs on this device, at the shapes of the public measured
tables (aiconfigurator-style: fused MoE by tokens and experts, GEMM m/n/k, decode attention batch
x context), so engine rows and imported public rows compare row for row
(specmoe.fit.calibrate fits them):
  gemm        x[m, k] @ W[n, k]^T as the engine's dense layers, shape [m, n, k]
  moe         the engine's MoE compute over slots (moe.run_slots: the Triton fused_moe on CUDA,
              per-expert torch elsewhere), tokens T, experts (distinct, with tokens), top_k,
              num_experts, shape [T, hidden, ffn]; name fused_moe | expert_loop
  expert      one SwiGLU expert in torch (what the CPU engine runs per expert), shape [n, h, ffn]
  attn        the engine's cache attention (ops.cache_attention: Triton on CUDA, SDPA elsewhere),
              shape [batch, queries, context, heads, kv_heads, head_dim]; bytes = the K/V read once
  h2d / d2h   copy of `bytes`, pinned or pageable, in chunks of `chunk` bytes
  cpu_expert  SwiGLU expert FFN on the host CPU    tokens, flops, bytes
dur_us is the median over samples; samples_us keeps every sample. On CUDA a sample is `launches`
back-to-back calls between two CUDA events (launch latency hidden behind the previous call, as in
the engine's stream), rotating over enough copies of the inputs to exceed twice the L2 cache, so
weights come from HBM as in serving; each event records launches and rotation. Elsewhere: one
call per sample, time.perf_counter.
"""
from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from specmoe.engine import ops
from specmoe.engine.tracer import device_fingerprint

from specmoe.errors import SpecMoEError
from specmoe.measure.trace import Header, event, write_trace

KINDS = ("gemm", "moe", "expert", "attn", "h2d", "d2h", "cpu_expert")
CUDA_KINDS = ("gemm", "moe", "attn", "h2d", "d2h", "cpu_expert")  # what a GPU engine runs
ROTATION_MAX = 8


def l2_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 50 << 20)


def rotation(set_bytes: int, device: torch.device) -> int:
    """Input copies to rotate over so that one pass touches more than twice the L2 cache."""
    l2 = l2_bytes(device)
    if not l2 or set_bytes <= 0:
        return 1
    return max(1, min(ROTATION_MAX, math.ceil(2 * l2 / set_bytes)))


def _time(fns: Callable | Sequence[Callable], device: torch.device, reps: int, warmup: int = 2,
          launches: int = 1) -> list[float]:
    """Microseconds per call, one entry per sample. fns: one callable or copies to rotate over."""
    fns = [fns] if callable(fns) else list(fns)
    for i in range(max(warmup, len(fns))):
        fns[i % len(fns)]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
        marks[0].record()
        n = 0
        for r in range(reps):
            for _ in range(launches):
                fns[n % len(fns)]()
                n += 1
            marks[r + 1].record()
        torch.cuda.synchronize(device)
        return [a.elapsed_time(b) * 1e3 / launches for a, b in itertools.pairwise(marks)]
    out = []
    for r in range(reps):
        t = time.perf_counter()
        fns[r % len(fns)]()
        out.append((time.perf_counter() - t) * 1e6)
    return out


class Bench:
    """Collects events; `t0` makes ts_us relative to the start of the run."""

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                 reps: int = 10, launches: int | None = None) -> None:
        self.device = torch.device(device)
        self.dtype, self.reps = dtype, reps
        self.launches = launches or (10 if self.device.type == "cuda" else 1)
        self.events: list[dict] = []
        self.t0 = time.perf_counter()

    def _timed(self, fns) -> tuple[list[float], dict]:
        fns = [fns] if callable(fns) else list(fns)
        s = _time(fns, self.device, self.reps, launches=self.launches)
        return s, {"launches": self.launches, "rotation": len(fns)}

    def _sets(self, make: Callable[[], object], set_bytes: int) -> list:
        """Copies of an op's inputs to rotate over (see rotation())."""
        return [make() for _ in range(rotation(set_bytes, self.device))]

    def _add(self, name: str, cat: str, samples: list[float], **fields) -> dict:
        ev = event(name, cat, (time.perf_counter() - self.t0) * 1e6, statistics.median(samples),
                   samples_us=[round(s, 3) for s in samples], reps=len(samples),
                   dtype=str(self.dtype).replace("torch.", ""), **fields)
        self.events.append(ev)
        return ev

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device).to(self.dtype)

    def gemm(self, shapes: Iterable[tuple[int, int, int]]) -> None:
        es = torch.finfo(self.dtype).bits // 8
        for m, n, k in shapes:
            nbytes = (m * k + k * n + m * n) * es
            sets = self._sets(lambda m=m, n=n, k=k: (self._rand(m, k), self._rand(n, k)), nbytes)
            s, how = self._timed([lambda a=a, w=w: a @ w.t() for a, w in sets])
            self._add("gemm", "gemm", s, flops=2 * m * n * k, shape=[m, n, k], bytes=nbytes, **how)
            del sets

    def moe(self, hidden: int, ffn: int, experts: int, top_k: int, tokens: Iterable[int],
            seed: int = 0) -> None:
        """The engine's MoE compute (moe.run_slots) over T tokens routed by a random router, every
        expert in its slot: on CUDA the Triton fused_moe exactly as the engine calls it."""
        from specmoe.engine.moe import run_slots

        g = torch.Generator().manual_seed(seed)
        es = torch.finfo(self.dtype).bits // 8
        wbytes = experts * 3 * hidden * ffn * es
        weights = self._sets(lambda: (self._rand(experts, 2 * ffn, hidden) / hidden ** 0.5,
                                      self._rand(experts, hidden, ffn) / ffn ** 0.5), wbytes)
        slot_of = torch.arange(experts, dtype=torch.int32, device=self.device)
        fused = ops.fused_moe_kernel(weights[0][0])
        name = "fused_moe" if fused is not None else "expert_loop"
        for T in tokens:
            logits = torch.randn(T, experts, generator=g)
            tw, ids = ops.route(logits, top_k, True)
            used = len(set(ids.flatten().tolist()))
            x = self._rand(T, hidden)
            tw, ids = tw.to(self.device), ids.to(self.device)
            fns = [lambda w13=w13, w2=w2, x=x, ids=ids, tw=tw: run_slots(
                x, ids, tw, slot_of, range(experts), w13, w2) for w13, w2 in weights]
            s, how = self._timed(fns)
            self._add(name, "moe", s, tokens=T, experts=used, top_k=top_k, num_experts=experts,
                      shape=[T, hidden, ffn], flops=6 * T * top_k * hidden * ffn,
                      bytes=used * 3 * hidden * ffn * es + 2 * T * hidden * es,
                      backend="triton" if fused is not None else "torch", **how)

    def expert(self, hidden: int, ffn: int, tokens: Iterable[int]) -> None:
        w13, w2 = self._rand(2 * ffn, hidden) / hidden ** 0.5, self._rand(hidden, ffn) / ffn ** 0.5
        for n in tokens:
            x = self._rand(n, hidden)
            s = _time(lambda x=x: ops.expert_ffn(x, w13, w2), self.device, self.reps)
            self._add("expert_ffn", "expert", s, tokens=n, flops=6 * n * hidden * ffn,
                      bytes=(3 * hidden * ffn + 2 * n * hidden) * x.element_size(),
                      shape=[n, hidden, ffn])

    def attention(self, heads: int, kv_heads: int, head_dim: int, batches: Iterable[int],
                  contexts: Iterable[int], queries: int = 1) -> None:
        """The engine's attention over its static KV cache (ops.cache_attention): queries at
        positions ctx - queries .. ctx - 1 of caches holding ctx positions."""
        for B in batches:
            for ctx in contexts:
                es = torch.finfo(self.dtype).bits // 8
                kv_bytes = 2 * B * ctx * kv_heads * head_dim * es
                pos = torch.arange(ctx - queries, ctx, device=self.device)
                mask = (torch.arange(ctx, device=self.device)[None, :] <= pos[:, None])[None, None]
                mask = mask.expand(B, 1, queries, ctx)
                lens = torch.full((B,), ctx - queries, dtype=torch.long, device=self.device)
                sets = self._sets(lambda B=B, ctx=ctx: (
                    self._rand(B, queries, heads, head_dim), self._rand(B, ctx, kv_heads, head_dim),
                    self._rand(B, ctx, kv_heads, head_dim)), kv_bytes)
                fns = [lambda q=q, k=k, v=v, lens=lens, ctx=ctx, mask=mask: ops.cache_attention(
                    q, k, v, lens, ctx, mask) for q, k, v in sets]
                s, how = self._timed(fns)
                self._add("attention", "attn", s, tokens=B * queries, context=ctx, batch=B,
                          flops=4 * B * queries * ctx * heads * head_dim,
                          bytes=kv_bytes + 2 * B * queries * heads * head_dim * es,
                          shape=[B, queries, ctx, heads, kv_heads, head_dim], **how)
                del sets

    def copy(
        self,
        sizes: Iterable[int],
        direction: str = "h2d",
        pinned: Iterable[bool] = (True, False),
        chunks: Iterable[int | None] = (None,),
    ) -> None:
        """Host<->device copies of `sizes` bytes; on a CPU device both ends are host buffers."""
        if direction not in ("h2d", "d2h"):
            raise SpecMoEError(f"direction={direction!r}: allowed h2d, d2h")
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        for size in sizes:
            for pin in pinned:
                if pin and not cuda:
                    continue  # page-locking needs a CUDA device
                host = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
                dev = torch.empty(size, dtype=torch.uint8, device=self.device)
                src, dst = (host, dev) if direction == "h2d" else (dev, host)
                for chunk in chunks:
                    c = chunk or size
                    s = _time(
                        lambda d=dst, s=src, c=c: _chunked_copy(d, s, c, stream),
                        self.device,
                        self.reps,
                    )
                    self._add(
                        f"copy_{direction}",
                        direction,
                        s,
                        bytes=size,
                        pinned=pin,
                        chunk=c,
                        stream="copy",
                    )

    def cpu_expert(self, hidden: int, ffn: int, tokens: Iterable[int]) -> None:
        w13 = torch.randn(2 * ffn, hidden).to(self.dtype)
        w2 = torch.randn(hidden, ffn).to(self.dtype)
        cpu = torch.device("cpu")
        for n in tokens:
            x = torch.randn(n, hidden).to(self.dtype)
            s = _time(lambda x=x: ops.expert_ffn(x, w13, w2), cpu, self.reps)
            self._add("cpu_expert_ffn", "cpu_expert", s, tokens=n, flops=6 * n * hidden * ffn,
                      bytes=(3 * hidden * ffn + 2 * n * hidden) * x.element_size(),
                      shape=[n, hidden, ffn], threads=torch.get_num_threads(), stream="host")

    def write(self, path: str | Path, extra: dict | None = None) -> Path:
        hdr = Header(source="engine", device=device_fingerprint(self.device), model=None,
                     workload={"kind": "microbench", "reps": self.reps}, policy={},
                     extra={"microbench": True, **(extra or {})})
        return write_trace(path, hdr, self.events)


def _chunked_copy(dst: torch.Tensor, src: torch.Tensor, chunk: int, stream) -> None:
    n = src.numel()
    if stream is None:
        for i in range(0, n, chunk):
            dst[i: i + chunk].copy_(src[i: i + chunk])
        return
    stream.wait_stream(torch.cuda.current_stream(stream.device))  # start after the timer's event
    with torch.cuda.stream(stream):
        for i in range(0, n, chunk):
            dst[i: i + chunk].copy_(src[i: i + chunk], non_blocking=True)
    torch.cuda.current_stream(dst.device if dst.is_cuda else src.device).wait_stream(stream)


def run_microbench(out: str | Path, device: str = "cpu", kinds: Iterable[str] | None = None,
                   quick: bool = False, dtype: str = "bfloat16", hidden: int = 4096,
                   ffn: int = 14336, heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
                   experts: int = 8, top_k: int = 2, reps: int | None = None,
                   launches: int | None = None) -> Path:
    """The standard grid (quick: a tiny one for tests and CPUs). Shapes default to Mixtral-8x7B.
    kinds: default every kind on a CPU, CUDA_KINDS on a GPU (the torch expert is not what a GPU
    engine runs)."""
    from specmoe.engine.config import DTYPES

    dev = torch.device(device)
    kinds = list(kinds) if kinds is not None else list(CUDA_KINDS if dev.type == "cuda" else KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SpecMoEError(f"microbench kinds {bad}: allowed {KINDS}")
    if dtype not in DTYPES:
        raise SpecMoEError(f"dtype={dtype!r}: allowed {list(DTYPES)}")
    if quick:
        hidden, ffn, heads, kv_heads, head_dim, experts, top_k = 64, 128, 4, 2, 16, 4, 2
    b = Bench(device, DTYPES[dtype], reps or (3 if quick else 20), launches)
    tokens = [1, 2, 4, 8, 16] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    if "gemm" in kinds:
        b.gemm([(n, ffn, hidden) for n in tokens] + [(n, hidden, ffn) for n in tokens])
    if "moe" in kinds:  # 1..64 tokens per expert, then prefill sizes up to 16k tokens
        moe_tokens = [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096,
                                                16384]
        b.moe(hidden, ffn, experts, top_k, moe_tokens)
    if "expert" in kinds:
        b.expert(hidden, ffn, tokens)
    if "attn" in kinds:
        batches = [1, 4] if quick else [1, 8, 32, 64, 128]
        contexts = [16, 64] if quick else [512, 2048, 8192]
        for q in (1, 3) if quick else (1, 5):  # decode, and verification of gamma = 4
            b.attention(heads, kv_heads, head_dim, batches, contexts, queries=q)
    sizes = [1 << 12, 1 << 16] if quick else [1 << p for p in range(12, 31, 2)]
    chunks = (None,) if quick else (None, 1 << 20, 1 << 24)
    for d in ("h2d", "d2h"):
        if d in kinds:
            b.copy(sizes, d, chunks=chunks)
    if "cpu_expert" in kinds:
        b.cpu_expert(hidden, ffn, [1, 2, 4] if quick else [1, 2, 4, 8, 16, 32, 64])
    return b.write(out, {"quick": quick, "kinds": kinds,
                         "shapes": {"hidden": hidden, "ffn": ffn, "heads": heads,
                                    "kv_heads": kv_heads, "head_dim": head_dim,
                                    "experts": experts, "top_k": top_k},
                         "kernels": ops.active_kernels()})


def main(argv=None) -> int:
    """python -m specmoe.engine.microbench OUT [--kinds ...] (needs only torch): for campaigns on
    machines without the core's dependencies; `specmoe engine microbench` is the same with the
    catalog's shapes."""
    import argparse

    ap = argparse.ArgumentParser(description="engine microbenchmarks -> one trace")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kinds", default=None, help=f"comma-separated, of {','.join(KINDS)}")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reps", type=int, default=None, help="samples per configuration")
    ap.add_argument("--launches", type=int, default=None, help="back-to-back calls per sample")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    path = run_microbench(a.out, device=a.device, quick=a.quick, dtype=a.dtype, reps=a.reps,
                          kinds=a.kinds.split(",") if a.kinds else None, launches=a.launches)
    print(f"wrote {path} in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
