"""Tracer: spans of engine work written in the shared trace schema (specmoe.trace/1).

On CUDA a span is a pair of CUDA events recorded on the stream that does the work (the compute
stream, or the copy stream for H2D); times are resolved once, at `events()`, relative to a base
event, so tracing adds no synchronisation. On the CPU a span is two time.perf_counter() readings.

Python gaps: when a span opens on an idle compute stream (after a host sync, say), its begin event
fires at once and the span would time the host's Python until the first kernel is enqueued. So
the tracer then gives the host a head start (op spans only, those that pass `name` to begin;
composite spans such as iteration or verify keep the wall time the host spends): a short device
sleep before the begin event, as long
as the host took to enqueue that span last time (per span name, moving average, capped), so the
span's kernels are queued by the time the event fires and the span measures device work. The
stream was idle anyway; a head start too long delays the GPU by the excess only.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from specmoe.measure.trace import Header, event, write_trace


class NullTracer:
    """Does nothing; the engine's default so untraced runs pay nothing."""

    enabled = False

    def begin(self, on=None, name: str | None = None):
        return None

    def end(self, token, name: str, cat: str, on=None, **fields: Any) -> None:
        pass

    @contextmanager
    def span(self, name: str, cat: str, **fields: Any) -> Iterator[None]:
        yield

    def instant(self, name: str, cat: str, **fields: Any) -> None:
        pass


class Tracer(NullTracer):
    enabled = True

    def __init__(self, device: str | torch.device = "cpu", head_start: bool = True) -> None:
        self.device = torch.device(device)
        self.header: dict[str, Any] = {}
        self.head = HeadStart(_cuda_sleep_us) if head_start else None
        self.reset()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def reset(self) -> None:
        self._pending: list[tuple[Any, Any, dict]] = []
        self._events: list[dict] = []   # raw fields (tensors unresolved)
        self._done: list[dict] = []     # schema events
        if self.cuda:
            self._base = torch.cuda.Event(enable_timing=True)
            self._base.record()
        self._t0 = time.perf_counter()

    def begin(self, on=None, name: str | None = None):
        """Start a span; on: the CUDA stream doing the work (default: the current stream);
        name: the span's name, for the head start (see the module doc)."""
        if self.cuda:
            if on is None and self.head is not None and name is not None:
                self.head.before(name, torch.cuda.current_stream(self.device).query())
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(on)
            return (ev, time.perf_counter())
        return time.perf_counter()

    def end(self, token, name: str, cat: str, on=None, **fields: Any) -> None:
        fields.setdefault("stream", "compute")
        if self.cuda:
            start, host0 = token
            if on is None and self.head is not None:
                self.head.after(name, (time.perf_counter() - host0) * 1e6)
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(on)
            self._pending.append((start, ev, dict(name=name, cat=cat, **fields)))
        else:
            t = time.perf_counter()
            ts = (token - self._t0) * 1e6
            self._events.append(dict(name=name, cat=cat, ts=ts, dur=(t - token) * 1e6, **fields))

    @contextmanager
    def span(self, name: str, cat: str, **fields: Any) -> Iterator[None]:
        tok = self.begin()  # composite spans (iteration, verify, ...) keep the host's time
        try:
            yield
        finally:
            self.end(tok, name, cat, **fields)

    def instant(self, name: str, cat: str, **fields: Any) -> None:
        """A zero-length event (e.g. 'accept' with the tokens accepted)."""
        self.end(self.begin(), name, cat, **fields)

    def events(self) -> list[dict]:
        """All events in time order (on CUDA this waits for the recorded work once). Field values
        that are tensors (counts the engine computed on the device, so as not to stall) are read
        here, once."""
        if self._pending:
            torch.cuda.synchronize()
            for a, b, f in self._pending:
                self._events.append(dict(f, ts=self._base.elapsed_time(a) * 1e3,
                                         dur=a.elapsed_time(b) * 1e3))
            self._pending = []
        self._done.extend(_resolve(f) for f in self._events)
        self._events = []
        return sorted(self._done, key=lambda e: e["ts_us"])

    def write(self, path: str | Path) -> Path:
        head = dict(self.header)
        hdr = Header(source="engine", device=head.pop("device", device_fingerprint(self.device)),
                     model=head.pop("model", None), workload=head.pop("workload", {}),
                     policy=head.pop("policy", {}), extra=head)
        return write_trace(path, hdr, self.events())


class HeadStart:
    """Per span name, a moving average of the host's enqueue time; `before` sleeps the device that
    long (at most cap_us) when the stream is idle."""

    def __init__(self, sleep_us, cap_us: float = 500.0, weight: float = 0.5) -> None:
        self.sleep_us, self.cap_us, self.weight = sleep_us, cap_us, weight
        self.host_us: dict[str, float] = {}

    def before(self, name: str, idle: bool) -> float:
        us = min(self.host_us.get(name, 0.0), self.cap_us) if idle else 0.0
        if us > 0:
            self.sleep_us(us)
        return us

    def after(self, name: str, host_us: float) -> None:
        old = self.host_us.get(name)
        self.host_us[name] = host_us if old is None else old + self.weight * (host_us - old)


_CYCLES_PER_US: float | None = None


def _cuda_sleep_us(us: float) -> None:
    """A device-side busy wait of about `us` microseconds on the current stream."""
    global _CYCLES_PER_US
    if _CYCLES_PER_US is None:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # load the kernel
        a.record()
        torch.cuda._sleep(1_000_000)
        b.record()
        b.synchronize()
        _CYCLES_PER_US = 1_000_000 / max(a.elapsed_time(b) * 1e3, 1e-3)
    torch.cuda._sleep(max(1, int(us * _CYCLES_PER_US)))


def _resolve(f: dict) -> dict:
    f = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in f.items()}
    name, cat, ts, dur = f.pop("name"), f.pop("cat"), f.pop("ts"), f.pop("dur")
    return event(name, cat, ts, dur, **f)


def device_fingerprint(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Name, versions, driver and clocks where available: what a calibration must be tied to."""
    device = torch.device(device)
    fp: dict[str, Any] = {"type": device.type, "torch": torch.__version__,
                          "host": platform.node(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                          "threads": torch.get_num_threads()}
    try:
        import triton

        fp["triton"] = triton.__version__
    except ImportError:
        fp["triton"] = None
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(idx)
        fp.update(name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                  memory_bytes=p.total_memory, cuda=torch.version.cuda)
        fp.update(_nvidia_smi(idx))
    else:
        fp["name"] = fp["cpu"]
    return fp


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(idx: int) -> dict[str, Any]:
    q = (
        "driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit,"
        "pcie.link.gen.current,pcie.link.width.current"
    )
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={idx}", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    keys = ("driver", "sm_clock_mhz", "mem_clock_mhz", "max_sm_clock_mhz", "power_limit_w",
            "pcie_gen", "pcie_width")
    vals = [v.strip() for v in out.split(",")]
    return dict(zip(keys, vals)) if len(vals) == len(keys) else {}
