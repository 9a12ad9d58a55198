"""Shared helpers for the Triton kernels: interpreter detection, device names, input checks.

Triton decides at decoration time (when a kernel module is imported) whether a @triton.jit
function runs compiled or under the interpreter, from the TRITON_INTERPRET environment variable.
We record that variable once, when this module is first imported (every kernel module imports it
before defining kernels), so `interpreting()` always agrees with how the kernels were built.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch
import triton
import triton.language as tl

from specmoe.errors import SpecMoEError

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

# Dtypes the kernels accept for activations and weights.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def interpreting() -> bool:
    """True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRET


def upcast_dots() -> bool:
    """Whether tl.dot operands must be upcast to fp32.

    Under the interpreter (Triton 3.9, torch 2.13 CPU) a bf16 tl.dot returns garbage while fp16 and
    fp32 dots are exact, so kernels take this as a constexpr and upcast when interpreting.
    """
    return _INTERPRET


def fix_bf16(dtype: torch.dtype) -> bool:
    """Whether kernels must round fp32 -> bf16 themselves (constexpr RNE flag).

    The interpreter converts fp32 to bf16 by truncation, while compiled kernels round to nearest
    even; with this flag set the kernels call rne_bf16 first so both paths store the same bits.
    """
    return _INTERPRET and dtype == torch.bfloat16


@triton.jit
def rne_bf16(x):
    """fp32 x rounded to the nearest bf16 value (ties to even), still as fp32 (finite x)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


def dot_precision(dtype: torch.dtype) -> str:
    """input_precision for tl.dot: exact "ieee" for fp32 tensors (no silent tf32) and under the
    interpreter (where operands are upcast to fp32); for 16-bit operands the flag has no effect."""
    return "ieee" if (_INTERPRET or dtype == torch.float32) else "tf32"


# When a list, launch() records kernel launches here instead of running them (compile_check).
_CAPTURE: list | None = None
_CAPTURE_SMS = 0


def launch(kernel, grid, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs), or record it while capture_launches() is active."""
    if _CAPTURE is not None:
        _CAPTURE.append((kernel, grid, args, kwargs))
        return
    kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def capture_launches(sm_count: int):
    """Record the launches of the public functions instead of running them, so their kernels can
    be compiled ahead of time for a GPU this machine does not have. Tensors may be on the meta
    device; sm_count stands in for the absent GPU's multiprocessor count."""
    global _CAPTURE, _CAPTURE_SMS
    _CAPTURE, _CAPTURE_SMS = [], sm_count
    try:
        yield _CAPTURE
    finally:
        _CAPTURE, _CAPTURE_SMS = None, 0


def sm_count(device) -> int:
    if _CAPTURE is not None:
        return _CAPTURE_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def device_name(device: torch.device | str | None = None) -> str:
    """A file-name-safe name of the device the kernels run on, e.g. NVIDIA_H100_80GB_HBM3.

    Under the interpreter it is "triton_interpreter_cpu"; without a GPU, "cpu".
    """
    if _INTERPRET:
        return "triton_interpreter_cpu"
    if not torch.cuda.is_available():
        return "cpu"
    dev = torch.device(device) if device is not None else torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# ----------------------------------------------------------------------------- input checks


def _err(name: str, value, allowed: str) -> SpecMoEError:
    return SpecMoEError(f"{name}: got {value}; allowed: {allowed}")


def check_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise _err(name, type(t).__name__, "a torch.Tensor")
    return t


def check_dtype(name: str, t: torch.Tensor, allowed) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise _err(f"{name}.dtype", str(t.dtype).replace("torch.", ""), names)


def check_shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    """expected: a tuple of ints or None (any size); its length fixes the number of dims."""
    shape = tuple(t.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise _err(f"{name}.shape", list(shape), want)


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise _err(name, f"a non-contiguous tensor (strides {tuple(t.stride())})",
                   "a contiguous tensor (call .contiguous())")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.dim() and t.stride(-1) != 1:
        raise _err(name, f"strides {tuple(t.stride())}", "a tensor whose last dim has stride 1")


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(name, repr(value), "an int")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"{low}..{high}"
        raise _err(name, value, rng)
    return value


def check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _err(name, repr(value), "a number > 0")
    return float(value)


def check_devices(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device, and a device the kernels can run on right now."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    dev = items[0][1].device
    for k, v in items[1:]:
        if v.device != dev:
            raise _err(f"{k}.device", str(v.device), f"the same device as {items[0][0]} ({dev})")
    if _CAPTURE is not None:
        return dev
    if _INTERPRET:
        if dev.type != "cpu":
            raise _err(f"{items[0][0]}.device", str(dev),
                       "cpu (TRITON_INTERPRET=1 runs kernels on CPU tensors)")
    elif dev.type != "cuda":
        raise _err(f"{items[0][0]}.device", str(dev),
                   "cuda (or set TRITON_INTERPRET=1 before importing triton to run on the CPU)")
    return dev


# ----------------------------------------------------------------------------- timing


def time_fn(fn, *, reps: int = 20, warmup: int = 3, flush_bytes: int = 0) -> list[float]:
    """Seconds per call of fn(), one entry per rep.

    CUDA: CUDA events around each call, after writing a flush buffer of flush_bytes (evicts L2 so
    weights come from HBM, as in serving). CPU: time.perf_counter around each call.
    """
    import time

    for _ in range(warmup):
        fn()
    if torch.cuda.is_available() and not _INTERPRET:
        flush = torch.empty(max(flush_bytes, 1), dtype=torch.uint8, device="cuda")
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            if flush_bytes:
                flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
