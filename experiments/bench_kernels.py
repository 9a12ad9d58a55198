"""Benchmark the Triton kernels against their torch references and the hardware roofline.

    python experiments/bench_kernels.py [--kernels moe,gating,rmsnorm,rope,attention]
        [--peak-tflops 989 --peak-gbps 3350 | --hardware NAME] [--out results.csv|.json]
    python experiments/bench_kernels.py --tiny      # tiny shapes; on a CPU under the interpreter

Per kernel and shape it prints the median time, achieved TFLOP/s and GB/s, the fraction of the
roofline (max(FLOPs/peak, bytes/bandwidth) / time) and the speed against the torch reference
run in the same dtype. Bytes are the unique bytes a kernel must move (for fused MoE: the
weights of the experts that received tokens, x and out; intermediates excluded), so the
roofline fraction is against the ideal; each row also gives the HBM fraction (achieved bytes/s
over the HBM peak). Peaks: the GPU's name selects its hwprofiles/gpus file (GPU_PROFILES; the
datasheet's dense bf16 and HBM bandwidth, read without pyyaml or pydantic, so this runs where only
torch, triton and numpy are installed); --peak-tflops/--peak-gbps override, --hardware NAME reads
specmoe.inputs.hardware.load_system.
A GPU not in the table needs --peak-* (no silent H100 default: an H200 row would be inflated
1.43x). On a GPU, times come from CUDA events around each call with L2 flushed before it; on a
CPU (only with --tiny, under TRITON_INTERPRET=1) from time.perf_counter, which measures the
interpreter (peaks then default to the H100 SXM's, which only scale the printed fractions).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
from functools import partial
from pathlib import Path

H100_SXM_BF16_TFLOPS = 989.0  # NVIDIA H100 datasheet, SXM, dense BF16 tensor core
H100_SXM_HBM_GBPS = 3350.0  # NVIDIA H100 datasheet, SXM, HBM3
# torch.cuda.get_device_name() substring -> hwprofiles/gpus/<profile>.yaml, whose datasheet
# numbers (bf16_tflops dense, hbm_bw_gbps, with their sources) are the one place peaks live. First
# match wins, so more specific names come first. Read with a regex: no pyyaml needed.
GPU_PROFILES = (
    ("H200", "h200-sxm"), ("H100 NVL", "h100-nvl"), ("H100 PCIe", "h100-pcie"),
    ("H100", "h100-sxm"), ("B200", "b200"), ("A100-PCIE-40GB", "a100-pcie-40gb"),
    ("A100", "a100-sxm-80gb"), ("L40S", "l40s"), ("L4", "l4"), ("A30", "a30"),
    ("RTX 4090", "rtx-4090"), ("RTX A5000", "rtx-a5000"), ("T4", "t4"),
)
PROFILE_DIR = Path(__file__).resolve().parents[1] / "hwprofiles" / "gpus"


def profile_peaks(profile: str) -> tuple[float, float]:
    """(bf16_tflops, hbm_bw_gbps) read from a GPU profile's top-level keys."""
    import re

    text = (PROFILE_DIR / f"{profile}.yaml").read_text()
    vals = {}
    for key in ("bf16_tflops", "hbm_bw_gbps"):
        m = re.search(rf"^{key}:\s*([0-9.]+)\s*$", text, re.MULTILINE)
        if m is None:
            raise SystemExit(f"{PROFILE_DIR / profile}.yaml: no top-level {key}")
        vals[key] = float(m.group(1))
    return vals["bf16_tflops"], vals["hbm_bw_gbps"]


def device_peaks(name: str) -> tuple[float, float, str] | None:
    """(bf16 TFLOP/s, HBM GB/s, source) for a GPU name, from its hwprofiles/gpus file."""
    for key, profile in GPU_PROFILES:
        if key.lower() in name.lower():
            return (*profile_peaks(profile), f"hwprofiles/gpus/{profile}.yaml (datasheet)")
    return None

MOE_MODELS = {  # hidden D, expert intermediate F, experts E, top-k (Hugging Face configs)
    "mixtral-8x7b": (4096, 14336, 8, 2),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
}
ATTN_MODELS = {  # query heads, kv heads, head dim
    "mixtral-8x7b": (32, 8, 128),
    "qwen3-30b-a3b": (32, 4, 128),
}
TINY_MOE = {"tiny": (64, 96, 8, 2)}
TINY_ATTN = {"tiny": (4, 2, 16)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default="moe,gating,rmsnorm,rope,attention")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="override the detected device's dense bf16 peak")
    ap.add_argument("--peak-gbps", type=float, default=None,
                    help="override the detected device's HBM bandwidth")
    ap.add_argument("--hardware", help="system name for specmoe.inputs.hardware.load_system")
    ap.add_argument("--models", default=None,
                    help=f"comma-separated, of {','.join(MOE_MODELS)} (default all)")
    ap.add_argument("--tokens-per-expert", default="1,2,4,8,16,32,64,128,256,512,1024,2048,4096")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--reps", type=int, default=None, help="timed calls per case")
    ap.add_argument("--no-reference", action="store_true", help="skip the torch reference")
    ap.add_argument("--out", type=Path, help="write rows to .csv or .json")
    return ap.parse_args(argv)


def _peaks(args, device_name: str | None = None) -> tuple[float, float, str]:
    if not args.hardware:
        found = device_peaks(device_name) if device_name else None
        if found is None and device_name and (args.peak_tflops is None or args.peak_gbps is None):
            raise SystemExit(f"GPU {device_name!r} is not in bench_kernels.GPU_PROFILES: pass "
                             "--peak-tflops and --peak-gbps (datasheet dense bf16, HBM GB/s)")
        tflops, gbps, source = found or (H100_SXM_BF16_TFLOPS, H100_SXM_HBM_GBPS,
                                         "H100 SXM datasheet (no GPU: interpreter timings)")
        if args.peak_tflops is not None or args.peak_gbps is not None:
            source = "cli"
        return (args.peak_tflops if args.peak_tflops is not None else tflops,
                args.peak_gbps if args.peak_gbps is not None else gbps, source)
    try:
        from specmoe.inputs.hardware import load_system
    except ImportError as exc:
        raise SystemExit(f"--hardware: specmoe.inputs.hardware.load_system is not available ({exc})"
                         ) from exc
    from specmoe.errors import SpecMoEError

    try:
        system = load_system(args.hardware)
    except SpecMoEError as exc:
        raise SystemExit(f"--hardware: {exc}") from exc
    gpu = system.gpu
    return float(gpu.bf16_tflops), float(gpu.hbm_bw_gbps), f"hardware:{args.hardware}"


class Bench:
    def __init__(self, args, torch, dev):
        self.args, self.torch, self.dev = args, torch, dev
        name = torch.cuda.get_device_name() if dev == "cuda" else None
        self.tflops, self.gbps, self.peak_source = _peaks(args, name)
        self.dtype = getattr(torch, args.dtype)
        on_gpu = dev == "cuda"
        self.reps = args.reps or (20 if on_gpu else 1)
        self.warmup = 3 if on_gpu else 0
        self.flush = 256 << 20 if on_gpu else 0
        self.rows: list[dict] = []

    def time(self, fn) -> float:
        from specmoe.kernels._runtime import time_fn

        return statistics.median(time_fn(fn, reps=self.reps, warmup=self.warmup,
                                         flush_bytes=self.flush))

    def case(self, kernel: str, shape: str, fn, ref, exact, flops: float, nbytes: float):
        """fn: the kernel; ref: the torch reference in the benchmark dtype (timed); exact: the
        fp32-math reference the kernel's output is checked against (max |difference|)."""
        t = self.time(fn)
        t_ref = err = None
        if not self.args.no_reference:
            t_ref = self.time(ref)
            err = (_first(fn()).float() - _first(exact()).float()).abs().max().item()
        t_flops, t_bytes = flops / (self.tflops * 1e12), nbytes / (self.gbps * 1e9)
        row = {"kernel": kernel, "shape": shape, "dtype": self.args.dtype, "time_us": t * 1e6,
               "ref_time_us": None if t_ref is None else t_ref * 1e6,
               "speedup_vs_ref": None if t_ref is None else t_ref / t,
               "tflops": flops / t / 1e12, "gbps": nbytes / t / 1e9,
               "roofline_fraction": max(t_flops, t_bytes) / t,
               "hbm_fraction": t_bytes / t, "flops_fraction": t_flops / t,
               "bound": "compute" if t_flops > t_bytes else "memory", "max_abs_err": err,
               "flops": flops, "bytes": nbytes}
        self.rows.append(row)
        ref_s = "" if t_ref is None else f" ref {t_ref * 1e6:10.1f} us ({t_ref / t:6.2f}x)"
        err_s = "" if err is None else f" err {err:.2e}"
        print(f"{kernel:10s} {shape:40s} {t * 1e6:10.1f} us {row['tflops']:8.2f} TFLOP/s "
              f"{row['gbps']:8.1f} GB/s {100 * row['hbm_fraction']:5.1f}% HBM "
              f"{100 * row['roofline_fraction']:5.1f}% roofline ({row['bound']}){ref_s}{err_s}",
              flush=True)


def _pick(models: dict, names: str | None) -> dict:
    if not names:
        return models
    bad = set(names.split(",")) - set(models)
    if bad:
        raise SystemExit(f"--models: unknown {sorted(bad)}; allowed: {', '.join(models)}")
    return {n: models[n] for n in names.split(",")}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def bench_moe(b: Bench):
    from specmoe.kernels.fused_moe import fused_moe, fused_moe_reference

    torch = b.torch
    models = TINY_MOE if b.args.tiny else _pick(MOE_MODELS, b.args.models)
    tpes = [1, 4] if b.args.tiny else [int(v) for v in b.args.tokens_per_expert.split(",")]
    g = torch.Generator(device="cpu").manual_seed(0)
    for name, (D, Fi, E, k) in models.items():
        w13 = (torch.randn(E, 2 * Fi, D, generator=g) * D ** -0.5).to(b.dev, b.dtype)
        w2 = (torch.randn(E, D, Fi, generator=g) * Fi ** -0.5).to(b.dev, b.dtype)
        slots = torch.arange(E, dtype=torch.int32, device=b.dev)
        esize = w13.element_size()
        for tpe in tpes:
            T = tpe * E // k  # balanced routing: every expert gets exactly tpe token-slots
            t = torch.arange(T, device=b.dev)[:, None] * k + torch.arange(k, device=b.dev)
            ids = (t % E).to(torch.int32)
            w = torch.softmax(torch.randn(T, k, generator=g), -1).to(b.dev)
            x = torch.randn(T, D, generator=g).to(b.dev, b.dtype)
            args = (x, w13, w2, w, ids, slots)
            nbytes = min(E, T * k) * 3 * D * Fi * esize + 2 * T * D * esize
            b.case("fused_moe", f"{name} T={T} tok/expert={tpe}",
                   partial(fused_moe, *args, check_values=False),
                   partial(fused_moe_reference, *args, compute_dtype=b.dtype),
                   partial(fused_moe_reference, *args), 6.0 * T * k * D * Fi, nbytes)


def bench_gating(b: Bench):
    from specmoe.kernels.gating import topk_gating, topk_gating_reference

    torch = b.torch
    cases = [(8, 8, 2)] if b.args.tiny else [(T, E, k) for E, k in ((8, 2), (128, 8))
                                             for T in (1, 64, 4096)]
    for T, E, k in cases:
        x = torch.randn(T, E, device=b.dev).to(b.dtype)
        ref = partial(topk_gating_reference, x, k)
        b.case("gating", f"T={T} E={E} k={k}", partial(topk_gating, x, k), ref, ref,
               5.0 * T * E, T * E * x.element_size() + T * k * 8)


def bench_rmsnorm(b: Bench):
    from specmoe.kernels.rmsnorm import rmsnorm, rmsnorm_reference

    torch = b.torch
    cases = [(8, 64)] if b.args.tiny else [(T, D) for D in (4096, 2048) for T in (1, 64, 4096)]
    for T, D in cases:
        x, r = (torch.randn(T, D, device=b.dev).to(b.dtype) for _ in range(2))
        wt = torch.randn(D, device=b.dev).to(b.dtype)
        ref = partial(rmsnorm_reference, x, wt, 1e-5, r)
        b.case("rmsnorm", f"T={T} D={D} +residual", partial(rmsnorm, x, wt, 1e-5, r), ref, ref,
               5.0 * T * D, (4 * T * D + D) * x.element_size())


def bench_rope(b: Bench):
    from specmoe.kernels.rope import rope, rope_reference

    torch = b.torch
    models = TINY_ATTN if b.args.tiny else ATTN_MODELS
    for name, (H, Hkv, Dh) in models.items():
        for T in ((8,) if b.args.tiny else (1, 64, 4096)):
            q = torch.randn(T, H, Dh, device=b.dev).to(b.dtype)
            k = torch.randn(T, Hkv, Dh, device=b.dev).to(b.dtype)
            pos = torch.randint(0, 32768, (T,), device=b.dev)
            ref = partial(rope_reference, q, k, pos, 1e6)
            b.case("rope", f"{name} T={T}", partial(rope, q, k, pos, 1e6), ref, ref,
                   3.0 * T * (H + Hkv) * Dh, 2 * T * (H + Hkv) * Dh * q.element_size() + T * 8)


def bench_attention(b: Bench):
    from specmoe.kernels.attention import attention, attention_reference

    torch = b.torch
    models = TINY_ATTN if b.args.tiny else _pick(ATTN_MODELS, b.args.models)
    grid = [(2, 40, 1), (2, 40, 3)] if b.args.tiny else [
        (B, ctx, Q) for B in (1, 8, 32) for ctx in (1024, 4096) for Q in (1, 5)]
    for name, (H, Hkv, Dh) in models.items():
        for B, ctx, Q in grid:
            S = ctx + Q
            q = torch.randn(B, Q, H, Dh, device=b.dev).to(b.dtype)
            kc = torch.randn(B, S, Hkv, Dh, device=b.dev).to(b.dtype)
            vc = torch.randn(B, S, Hkv, Dh, device=b.dev).to(b.dtype)
            lens = torch.full((B,), ctx, dtype=torch.int32, device=b.dev)
            args = (q, kc, vc, lens)
            b.case("attention", f"{name} B={B} ctx={ctx} Q={Q}",
                   partial(attention, *args, check_lens=False),
                   partial(attention_reference, *args, compute_dtype=b.dtype),
                   partial(attention_reference, *args),
                   4.0 * B * Q * H * Dh * (ctx + (Q + 1) / 2),
                   (2 * B * S * Hkv * Dh + 2 * B * Q * H * Dh) * q.element_size())


BENCHES = {"moe": bench_moe, "gating": bench_gating, "rmsnorm": bench_rmsnorm,
           "rope": bench_rope, "attention": bench_attention}


def _write(path: Path, meta: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(meta) + list(rows[0]) if rows else list(meta))
        w.writeheader()
        for row in rows:
            w.writerow({**meta, **row})


def main(argv=None) -> int:
    args = parse_args(argv)
    unknown = set(args.kernels.split(",")) - set(BENCHES)
    if unknown:
        raise SystemExit(f"--kernels: unknown {sorted(unknown)}; allowed: {', '.join(BENCHES)}")
    import torch

    if not torch.cuda.is_available():
        if not args.tiny:
            raise SystemExit(
                "no CUDA GPU: run with --tiny (kernels then run under the interpreter)"
            )
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before specmoe.kernels imports triton
    import triton
    from specmoe.kernels import _runtime as rt

    dev = "cpu" if rt.interpreting() else "cuda"
    b = Bench(args, torch, dev)
    meta = {"device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor()
                or platform.machine(), "interpreter": rt.interpreting(), "torch": torch.__version__,
                "triton": triton.__version__, "peak_tflops": b.tflops, "peak_gbps": b.gbps,
                "peak_source": b.peak_source, "reps": b.reps}
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    for name in args.kernels.split(","):
        BENCHES[name](b)
    if args.out:
        _write(args.out, meta, b.rows)
        print(f"wrote {len(b.rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
