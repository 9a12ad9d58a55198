"""Tracer: spans of engine work written in the shared trace schema (specmoe.trace/1).

On CUDA a span is a pair of CUDA events recorded on the stream that does the work (the compute
stream, or the copy stream for H2D); times are resolved once, at `events()`, relative to a base
event, so tracing adds no synchronisation. On the CPU a span is two time.perf_counter() readings.
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

    def begin(self, on=None):
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

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.header: dict[str, Any] = {}
        self.reset()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def reset(self) -> None:
        self._pending: list[tuple[Any, Any, dict]] = []
        self._events: list[dict] = []
        if self.cuda:
            self._base = torch.cuda.Event(enable_timing=True)
            self._base.record()
        self._t0 = time.perf_counter()

    def begin(self, on=None):
        """Start a span; on: the CUDA stream doing the work (default: the current stream)."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(on)
            return ev
        return time.perf_counter()

    def end(self, token, name: str, cat: str, on=None, **fields: Any) -> None:
        fields.setdefault("stream", "compute")
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(on)
            self._pending.append((token, ev, dict(name=name, cat=cat, **fields)))
        else:
            t = time.perf_counter()
            ts = (token - self._t0) * 1e6
            self._events.append(event(name, cat, ts, (t - token) * 1e6, **fields))

    @contextmanager
    def span(self, name: str, cat: str, **fields: Any) -> Iterator[None]:
        tok = self.begin()
        try:
            yield
        finally:
            self.end(tok, name, cat, **fields)

    def instant(self, name: str, cat: str, **fields: Any) -> None:
        """A zero-length event (e.g. 'accept' with the tokens accepted)."""
        self.end(self.begin(), name, cat, **fields)

    def events(self) -> list[dict]:
        """All events in time order (on CUDA this waits for the recorded work once)."""
        if self._pending:
            torch.cuda.synchronize()
            for a, b, f in self._pending:
                name, cat = f.pop("name"), f.pop("cat")
                self._events.append(event(name, cat, self._base.elapsed_time(a) * 1e3,
                                          a.elapsed_time(b) * 1e3, **f))
            self._pending = []
        return sorted(self._events, key=lambda e: e["ts_us"])

    def write(self, path: str | Path) -> Path:
        head = dict(self.header)
        hdr = Header(source="engine", device=head.pop("device", device_fingerprint(self.device)),
                     model=head.pop("model", None), workload=head.pop("workload", {}),
                     policy=head.pop("policy", {}), extra=head)
        return write_trace(path, hdr, self.events())


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
    q = "driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit,pcie.link.gen.current,pcie.link.width.current"
    try:
        out = subprocess.run(["nvidia-smi", f"--id={idx}", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    keys = ("driver", "sm_clock_mhz", "mem_clock_mhz", "max_sm_clock_mhz", "power_limit_w",
            "pcie_gen", "pcie_width")
    vals = [v.strip() for v in out.split(",")]
    return dict(zip(keys, vals)) if len(vals) == len(keys) else {}
