"""Compile every kernel ahead of time for an NVIDIA GPU this machine may not have.

    python -m specmoe.kernels.compile_check [--arch 80 90] [--quick]

Runs the public functions on meta tensors at model shapes with launches captured (nothing
executes), then compiles each distinct launch with triton.compile for the target architecture
(Triton's bundled ptxas; no GPU or driver needed). Catches what the interpreter cannot: frontend
type errors, constexpr misuse, and shared memory per program beyond a device's limit. Prints one
line per kernel variant; exit status 1 if any fails or exceeds the limit.
Needs TRITON_INTERPRET unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import _runtime as rt

# Max dynamic shared memory per block (bytes), CUDA C programming guide, compute capabilities.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# The default configs promise to fit the smallest of these.
PORTABLE_SHARED = 99 * 1024
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
          torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1"}


def _arg_type(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _TYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(v).__name__}")


def _divisible(v) -> bool:
    if isinstance(v, torch.Tensor):
        return True  # allocations are 16-byte aligned
    return isinstance(v, int) and not isinstance(v, bool) and v % 16 == 0


def _meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _scenarios(quick: bool):
    """(label, thunk) pairs calling the public functions at model shapes."""
    from .attention import attention
    from .fused_moe import fused_moe
    from .gating import topk_gating
    from .rmsnorm import rmsnorm
    from .rope import rope

    moe = [("mixtral", 4096, 14336, 8, 2), ("qwen3-30b-a3b", 2048, 768, 128, 8)]
    tokens = (1, 64, 4096) if not quick else (1,)
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16, torch.float32)
    out = []
    for name, D, Fi, E, k in moe[: 1 if quick else 2]:
        for T in tokens:
            for dt in dtypes:
                def run(D=D, Fi=Fi, E=E, k=k, T=T, dt=dt):
                    fused_moe(_meta(T, D, dtype=dt), _meta(E, 2 * Fi, D, dtype=dt),
                              _meta(E, D, Fi, dtype=dt), _meta(T, k, dtype=torch.float32),
                              _meta(T, k, dtype=torch.int32), _meta(E, dtype=torch.int32),
                              check_values=False)
                out.append((f"fused_moe {name} T={T} {dt}", run))
    for E, k, kw in ((8, 2, {}), (128, 8, {}), (256, 8, {"scoring": "sigmoid"})):
        bias = _meta(E, dtype=torch.float32) if kw else None
        out.append((f"gating E={E} k={k} {kw}", lambda E=E, k=k, kw=kw, bias=bias: topk_gating(
            _meta(64, E), k, correction_bias=bias, **kw)))
    for dt in dtypes:
        out.append((f"rmsnorm {dt}", lambda dt=dt: (
            rmsnorm(_meta(8, 4096, dtype=dt), _meta(4096, dtype=dt)),
            rmsnorm(_meta(8, 4096, dtype=dt), _meta(4096, dtype=dt), 1e-5,
                    _meta(8, 4096, dtype=dt)))))
        out.append((f"rope {dt}", lambda dt=dt: rope(
            _meta(8, 32, 128, dtype=dt), _meta(8, 8, 128, dtype=dt),
            _meta(8, dtype=torch.int64), 1e6)))
        for Q, G in ((1, 4), (5, 8)):
            out.append((f"attention Q={Q} G={G} {dt}", lambda Q=Q, G=G, dt=dt: attention(
                _meta(4, Q, 8 * G, 128, dtype=dt), _meta(4, 4096, 8, 128, dtype=dt),
                _meta(4, 4096, 8, 128, dtype=dt), _meta(4, dtype=torch.int32),
                check_lens=False)))
    return out


def compile_launch(kernel, args, kwargs, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    opts = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    consts = {k: v for k, v in kwargs.items() if k not in opts}
    names = kernel.arg_names
    positional = dict(zip([n for n in names if n not in consts], args))
    sig = {n: "constexpr" if n in consts else _arg_type(positional[n]) for n in names}
    # What the JIT infers at launch: 16-byte aligned pointers, ints divisible by 16.
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n in positional and _divisible(positional[n])}
    src = ASTSource(kernel, sig, consts, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90])
    ap.add_argument("--quick", action="store_true", help="a few variants only (for tests)")
    a = ap.parse_args(argv)
    if rt.interpreting():
        print("compile_check: unset TRITON_INTERPRET first", file=sys.stderr)
        return 2
    failures = 0
    for arch in a.arch:
        seen = set()
        for label, thunk in _scenarios(a.quick):
            with rt.capture_launches(sm_count=132) as launches:
                thunk()
            for kernel, _grid, args, kwargs in launches:
                key = (kernel.__name__, tuple(_arg_type(v) for v in args),
                       tuple(sorted(kwargs.items())))
                if key in seen:
                    continue
                seen.add(key)
                failures += _report(arch, label, kernel, args, kwargs)
    return 1 if failures else 0


def _report(arch, label, kernel, args, kwargs) -> int:
    try:
        shared = compile_launch(kernel, args, kwargs, arch).metadata.shared
    except Exception as exc:  # noqa: BLE001 - report every failure, not just the first
        print(f"FAIL sm_{arch} {kernel.__name__} ({label}): {type(exc).__name__}: {exc}")
        return 1
    limit = min(SHARED_LIMIT.get(arch, PORTABLE_SHARED), PORTABLE_SHARED)
    ok = shared <= limit
    print(f"{'ok  ' if ok else 'OVER'} sm_{arch} {kernel.__name__:16s} shared={shared:6d} B "
          f"({label})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
