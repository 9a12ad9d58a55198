"""Microbenchmarks for calibration: each measured configuration becomes one trace event.

Categories and fields (what specmoe.fit.calibrate fits):
  gemm        [m, n, k] GEMM                       flops, bytes (operands + result), shape
  expert      SwiGLU expert FFN over n tokens      tokens, flops, bytes (weights + activations)
  attn        decode/verify attention, B x context tokens (queries), context, flops, bytes (KV read)
  h2d / d2h   copy of `bytes`, pinned or pageable, in chunks of `chunk` bytes
  cpu_expert  SwiGLU expert FFN on the host CPU    tokens, flops, bytes
dur_us is the median over reps; samples_us keeps every rep. On CUDA: CUDA events; else perf_counter.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from specmoe.engine import ops
from specmoe.engine.tracer import device_fingerprint

from specmoe.errors import SpecMoEError
from specmoe.measure.trace import Header, event, write_trace

KINDS = ("gemm", "expert", "attn", "h2d", "d2h", "cpu_expert")


def _time(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> list[float]:
    """Microseconds per call, one entry per rep."""
    for _ in range(warmup):
        fn()
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) * 1e3)
        return out
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


class Bench:
    """Collects events; `t0` makes ts_us relative to the start of the run."""

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                 reps: int = 10) -> None:
        self.device = torch.device(device)
        self.dtype, self.reps = dtype, reps
        self.events: list[dict] = []
        self.t0 = time.perf_counter()

    def _add(self, name: str, cat: str, samples: list[float], **fields) -> dict:
        ev = event(name, cat, (time.perf_counter() - self.t0) * 1e6, statistics.median(samples),
                   samples_us=[round(s, 3) for s in samples], reps=len(samples),
                   dtype=str(self.dtype).replace("torch.", ""), **fields)
        self.events.append(ev)
        return ev

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device).to(self.dtype)

    def gemm(self, shapes: Iterable[tuple[int, int, int]]) -> None:
        for m, n, k in shapes:
            a, b = self._rand(m, k), self._rand(k, n)
            s = _time(lambda a=a, b=b: a @ b, self.device, self.reps)
            self._add("gemm", "gemm", s, flops=2 * m * n * k, shape=[m, n, k],
                      bytes=(m * k + k * n + m * n) * a.element_size())

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
        for B in batches:
            for ctx in contexts:
                q = self._rand(B, heads, queries, head_dim)
                k, v = self._rand(B, kv_heads, ctx, head_dim), self._rand(B, kv_heads, ctx, head_dim)
                pos = torch.arange(ctx - queries, ctx, device=self.device)
                mask = (torch.arange(ctx, device=self.device)[None, :] <= pos[:, None])[None, None]
                mask = mask.expand(B, 1, queries, ctx)
                s = _time(lambda q=q, k=k, v=v, m=mask: ops.attention(q, k, v, m), self.device, self.reps)
                self._add("attention", "attn", s, tokens=B * queries, context=ctx, batch=B,
                          flops=4 * B * queries * ctx * heads * head_dim,
                          bytes=2 * B * ctx * kv_heads * head_dim * q.element_size(),
                          shape=[B, queries, ctx, heads, kv_heads, head_dim])

    def copy(self, sizes: Iterable[int], direction: str = "h2d", pinned: Iterable[bool] = (True, False),
             chunks: Iterable[int | None] = (None,)) -> None:
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
                    s = _time(lambda d=dst, s=src, c=c: _chunked_copy(d, s, c, stream), self.device, self.reps)
                    self._add(f"copy_{direction}", direction, s, bytes=size, pinned=pin,
                              chunk=c, stream="copy")

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


def run_microbench(out: str | Path, device: str = "cpu", kinds: Iterable[str] = KINDS,
                   quick: bool = False, dtype: str = "bfloat16", hidden: int = 4096,
                   ffn: int = 14336, heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
                   reps: int | None = None) -> Path:
    """The standard grid (quick: a tiny one for tests and CPUs). Shapes default to Mixtral-8x7B."""
    from specmoe.engine.config import DTYPES

    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SpecMoEError(f"microbench kinds {bad}: allowed {KINDS}")
    if dtype not in DTYPES:
        raise SpecMoEError(f"dtype={dtype!r}: allowed {list(DTYPES)}")
    if quick:
        hidden, ffn, heads, kv_heads, head_dim = 64, 128, 4, 2, 16
    b = Bench(device, DTYPES[dtype], reps or (3 if quick else 20))
    tokens = [1, 2, 4, 8, 16] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    if "gemm" in kinds:
        b.gemm([(n, ffn, hidden) for n in tokens] + [(n, hidden, ffn) for n in tokens])
    if "expert" in kinds:
        b.expert(hidden, ffn, tokens)
    if "attn" in kinds:
        b.attention(heads, kv_heads, head_dim, [1, 4] if quick else [1, 8, 32, 128, 256],
                    [16, 64] if quick else [128, 512, 2048, 8192])
    sizes = [1 << 12, 1 << 16] if quick else [1 << p for p in range(12, 31, 2)]
    chunks = (None,) if quick else (None, 1 << 20, 1 << 24)
    for d in ("h2d", "d2h"):
        if d in kinds:
            b.copy(sizes, d, chunks=chunks)
    if "cpu_expert" in kinds:
        b.cpu_expert(hidden, ffn, [1, 2, 4] if quick else [1, 2, 4, 8, 16, 32, 64])
    return b.write(out, {"quick": quick, "shapes": {"hidden": hidden, "ffn": ffn, "heads": heads,
                                                   "kv_heads": kv_heads, "head_dim": head_dim}})
