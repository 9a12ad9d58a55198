"""Import public measured kernel tables into specmoe.trace/1 microbenchmark traces.

Source: NVIDIA aiconfigurator, the PyPI package `aiconfigurator-core` 0.12.0 (Apache-2.0,
Copyright NVIDIA CORPORATION & AFFILIATES; https://github.com/ai-dynamo/aiconfigurator). It ships
per-GPU kernel latencies measured with CUDA-graph replay of one op for TensorRT-LLM, SGLang and
vLLM under `aiconfigurator_core/systems/data/<gpu>/<op>/<backend>/<version>/*.parquet`; the
default version per GPU and backend is `current` in `systems/query_versions.yaml`.

Rows become the events calibration already reads (specmoe.calibrate's docstring), one per row,
`dur_us` = the table's latency (ms) × 1000, with the row's provenance in the event:
  moe     name "fused_moe", tokens, top_k, experts (distinct experts the routing touches),
          num_experts, max_expert_tokens (the busiest expert's tokens), shape [tokens, hidden,
          inter], distribution ("balanced" | "power_law_<alpha>"), dtype, kernel_source,
          gated: false for non-gated experts (two matrices; absent = gated SwiGLU)
  gemm    name "gemm", shape [m, n, k] (x[m, k] @ W[k, n]), dtype, kernel_source
  attn    name "attention", phase "decode": tokens = batch, shape [batch, 1, context, heads,
          kv_heads, head_dim] (context = isl + step cached positions), dtype, kernel_source
  attn    name "context_attention", phase "prefill": tokens = batch × seq, shape [batch, seq,
          seq, heads, kv_heads, head_dim] (causal self-attention over seq), dtype, kernel_source
Where several kernels measured one shape, the table's main kernel is kept (one_kernel_per_shape).
Only single-GPU rows of bf16 (or fp16) compute with a bf16 KV cache are taken: moe_tp_size =
moe_ep_size = 1, attention window 0, beam 1, head_dim <= MAX_HEAD_DIM. The header names the
device (the table's own CUDA
device name), the package and backend versions, row counts per table and rows skipped, and
`replay: true`: each latency is one op replayed alone, so a working set that fits in L2 was
served from L2 (the cost model's `replay` case).

The routing of the fused-MoE rows follows aiconfigurator's collector: "balanced" gives token i
the experts (i + j·⌈E/k⌉) mod E (fractional when tokens < ⌈E/k⌉); "power_law_α" draws
per-expert
loads from a power law on [1, 0.8·tokens] (on [0.01, 2] when tokens·k ≤ E) scaled to tokens·k.
Their draw is random and unrecorded, so `experts` and `max_expert_tokens` of those rows are the
mean over DRAWS seeded draws of the same generator.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from specmoe.errors import SpecMoEError
from specmoe.measure.trace import Trace, event, write_trace

PACKAGE = "aiconfigurator-core"
PACKAGE_VERSION = "0.12.0"
LICENSE = "Apache-2.0"
ATTRIBUTION = ("NVIDIA aiconfigurator (aiconfigurator-core 0.12.0, Apache-2.0, Copyright NVIDIA "
               "CORPORATION & AFFILIATES, https://github.com/ai-dynamo/aiconfigurator)")
BACKENDS = ("vllm", "sglang", "trtllm")
# aiconfigurator system name -> specmoe GPU profile (hwprofiles/gpus/)
GPU_PROFILES = {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm", "b200_sxm": "b200",
                "b300_sxm": "b300", "gb200": "gb200", "gb300": "gb300", "a100_sxm": "a100-sxm-80gb",
                "l40s": "l40s", "rtx_pro_6000_server": "rtx-pro-6000"}
OP_TABLES = {"moe": ("moe", "moe_perf.parquet"), "gemm": ("gemm", "gemm_perf.parquet"),
             "decode_attention": ("attention", "generation_attention_perf.parquet"),
             "prefill_attention": ("attention", "context_attention_perf.parquet")}
COMPUTE_DTYPES = ("bfloat16", "float16")
# head_dim 512 rows run another, far slower kernel path (H100 vLLM decode: 100-400 µs per
# (sequence, kv head) item against 3-4 µs at head_dim <= 256); no catalog model uses it
MAX_HEAD_DIM = 256
# fused-MoE shapes whose experts are not gated (two matrices, relu²: Nemotron-H-style models):
# the TensorRT-LLM tables run them with a kernel named moe_torch_flow_nongated; the same shapes
# in the vLLM and SGLang tables are the same models. (hidden, inter, experts, top_k)
NONGATED_MOE = {(2048, 5120, 512, 22), (2688, 1856, 128, 6)}
# columns that make two rows the same measurement, per op (kernel_source aside)
SHAPE_COLUMNS = {
    "moe": ("num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "distribution"),
    "gemm": ("m", "n", "k"),
    "decode_attention": ("batch_size", "isl", "step", "num_heads", "num_key_value_heads",
                         "head_dim"),
    "prefill_attention": ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"),
}
DRAWS = 16


# ------------------------------------------------------------------------------------ the package

def data_root() -> Path:
    """systems/ of the installed package; a clear error when the `tables` extra is missing."""
    try:
        import aiconfigurator_core
    except ImportError:
        raise SpecMoEError(f"importing aiconfigurator tables needs the package {PACKAGE}=="
                           f"{PACKAGE_VERSION}: pip install 'specmoe[tables]'") from None
    return Path(aiconfigurator_core.__file__).parent / "systems"


def installed_version() -> str:
    from importlib.metadata import version

    return version(PACKAGE)


def package_version(root: Path) -> str:
    """The version of the tables under `root`: a copy (the test fixture) names it in a
    PACKAGE_VERSION file, the installed package in its metadata."""
    marker = root / "PACKAGE_VERSION"
    return marker.read_text().strip() if marker.is_file() else installed_version()


def available_gpus(root: Path | None = None) -> list[str]:
    root = root or data_root()
    return sorted(p.name for p in (root / "data").iterdir() if p.is_dir())


def default_version(gpu: str, backend: str, root: Path | None = None) -> str:
    """The `current` version of a backend on a GPU (query_versions.yaml: overrides, else
    defaults)."""
    q = yaml.safe_load(((root or data_root()) / "query_versions.yaml").read_text())
    slot = (q.get("overrides", {}).get(gpu, {}) or {}).get(backend) or q["defaults"].get(backend)
    if not slot:
        raise SpecMoEError(f"backend={backend!r}: allowed {sorted(q['defaults'])}")
    return str(slot["current"])


def _vkey(v: str) -> tuple:
    """Order of backend versions: release numbers, then rcN before the release, .postN after."""
    m = re.match(r"^(\d+(?:\.\d+)*)(?:rc(\d+))?(?:\.post(\d+))?", v)
    if not m:
        return ((), 0, 0, 0)
    release = tuple(int(x) for x in m.group(1).split("."))
    rc = m.group(2)
    return (release, 0 if rc else 1, int(rc or 0), int(m.group(3) or 0))


def table_file(gpu: str, op: str, backend: str, version: str, root: Path | None = None
               ) -> tuple[Path, str] | None:
    """(parquet, version used) for one op: the requested version, else the newest older one that
    has the table (aiconfigurator's own backward fill), else None."""
    root = root or data_root()
    sub, fname = OP_TABLES[op]
    base = root / "data" / gpu / sub / backend
    if not base.is_dir():
        return None
    have = sorted((d.name for d in base.iterdir() if (d / fname).is_file()), key=_vkey,
                  reverse=True)
    for v in have:
        if _vkey(v) <= _vkey(version):
            return base / v / fname, v
    return None


# ------------------------------------------------------------------------------------ routing

def balanced_loads(tokens: int, experts: int, top_k: int) -> np.ndarray:
    """Tokens per expert under aiconfigurator's balanced routing (exact, its formula)."""
    stride = math.ceil(experts / top_k)
    i = np.arange(tokens)[:, None].astype(float)
    j = np.arange(top_k)[None, :]
    ids = (i + j * stride) if tokens >= stride else (i * stride / tokens + j * stride)
    ids = np.floor(ids).astype(np.int64) % experts
    return np.bincount(ids.ravel(), minlength=experts)


def power_law_loads(tokens: int, experts: int, top_k: int, alpha: float,
                    rng: np.random.Generator) -> np.ndarray:
    """One draw of aiconfigurator's power-law per-expert loads, summing to tokens·top_k."""
    lo, hi = (1.0, tokens * 0.8) if tokens * top_k > experts else (0.01, 2.0)
    u = rng.random(experts)
    x = ((hi ** (1 - alpha) - lo ** (1 - alpha)) * u + lo ** (1 - alpha)) ** (1 / (1 - alpha))
    target = tokens * top_k
    loads = np.round(x / x.sum() * target).astype(np.int64)
    delta = int(target - loads.sum())
    order = np.argsort(-loads, kind="stable")
    for i in range(abs(delta)):   # add to the largest, take from the smallest non-empty
        if delta > 0:
            loads[order[i % experts]] += 1
        else:
            e = order[-(i % experts) - 1]
            loads[e if loads[e] > 0 else int(np.argmax(loads))] -= 1
    return loads


@lru_cache(maxsize=4096)
def routing_summary(tokens: int, experts: int, top_k: int,
                    distribution: str) -> tuple[float, float]:
    """(distinct experts touched, busiest expert's tokens) of a routing distribution."""
    if distribution == "balanced":
        loads = balanced_loads(tokens, experts, top_k)
        return float(np.count_nonzero(loads)), float(loads.max())
    if distribution.startswith("power_law_"):
        alpha = float(distribution.removeprefix("power_law_"))
        rng = np.random.default_rng(0)
        draws = [power_law_loads(tokens, experts, top_k, alpha, rng) for _ in range(DRAWS)]
        return (float(np.mean([np.count_nonzero(d) for d in draws])),
                float(np.mean([d.max() for d in draws])))
    raise SpecMoEError(f"moe distribution={distribution!r}: allowed balanced, power_law_<alpha>")


# ------------------------------------------------------------------------------- rows -> events

def _ev(name: str, cat: str, latency_ms: float, **fields: Any) -> dict[str, Any]:
    phase = fields.pop("phase", "bench")
    return event(name, cat, 0.0, float(latency_ms) * 1e3, phase=phase, **fields)


def one_kernel_per_shape(df, op: str):
    """Rows measured by several kernels (e.g. SGLang decode: flashinfer, triton, trtllm_mha) keep
    the table's main kernel (the one with most rows); shapes only another kernel measured keep
    that one. A point is then one kernel, not a median of different ones."""
    if df.empty or df.kernel_source.nunique() <= 1:
        return df
    rank = df.kernel_source.map(df.kernel_source.value_counts())
    return (df.assign(_rank=-rank).sort_values("_rank", kind="stable")
              .drop_duplicates(list(SHAPE_COLUMNS[op])).drop(columns="_rank").sort_index())


def moe_events(df) -> list[dict]:
    sel = df[df.moe_dtype.isin(COMPUTE_DTYPES) & (df.moe_tp_size == 1) & (df.moe_ep_size == 1)]
    out = []
    for r in one_kernel_per_shape(sel, "moe").itertuples(index=False):
        gated = (int(r.hidden_size), int(r.inter_size), int(r.num_experts), int(r.topk)) \
            not in NONGATED_MOE
        distinct, busiest = routing_summary(int(r.num_tokens), int(r.num_experts), int(r.topk),
                                            str(r.distribution))
        out.append(_ev("fused_moe", "moe", r.latency, tokens=int(r.num_tokens), top_k=int(r.topk),
                       experts=distinct, num_experts=int(r.num_experts), max_expert_tokens=busiest,
                       shape=[int(r.num_tokens), int(r.hidden_size), int(r.inter_size)],
                       distribution=str(r.distribution), dtype=str(r.moe_dtype),
                       kernel_source=str(r.kernel_source), gated=None if gated else False))
    return out


def gemm_events(df) -> list[dict]:
    sel = one_kernel_per_shape(df[df.gemm_dtype.isin(COMPUTE_DTYPES)], "gemm")
    return [_ev("gemm", "gemm", r.latency, shape=[int(r.m), int(r.n), int(r.k)],
                dtype=str(r.gemm_dtype), kernel_source=str(r.kernel_source))
            for r in sel.itertuples(index=False)]


def _attn_rows(df):
    # older tables have no window_size column: full attention only
    window = df.window_size if "window_size" in df.columns else 0
    return df[df.attn_dtype.isin(COMPUTE_DTYPES) & df.kv_cache_dtype.isin(COMPUTE_DTYPES)
              & (window == 0) & (df.beam_width == 1) & (df.head_dim <= MAX_HEAD_DIM)]


def _heads(r) -> list[int]:
    return [int(r.num_heads), int(r.num_key_value_heads), int(r.head_dim)]


def decode_attention_events(df) -> list[dict]:
    out = []
    for r in one_kernel_per_shape(_attn_rows(df), "decode_attention").itertuples(index=False):
        b, ctx = int(r.batch_size), int(r.isl) + int(r.step)
        out.append(_ev("attention", "attn", r.latency, phase="decode", tokens=b,
                       shape=[b, 1, ctx, *_heads(r)],
                       dtype=str(r.attn_dtype), kernel_source=str(r.kernel_source)))
    return out


def prefill_attention_events(df) -> list[dict]:
    out = []
    for r in one_kernel_per_shape(_attn_rows(df), "prefill_attention").itertuples(index=False):
        b, s = int(r.batch_size), int(r.isl)
        out.append(_ev("context_attention", "attn", r.latency, phase="prefill", tokens=b * s,
                       shape=[b, s, s, *_heads(r)],
                       dtype=str(r.attn_dtype), kernel_source=str(r.kernel_source)))
    return out


CONVERT = {"moe": moe_events, "gemm": gemm_events, "decode_attention": decode_attention_events,
           "prefill_attention": prefill_attention_events}


# ------------------------------------------------------------------------------------ traces

def import_tables(gpu: str, backend: str, version: str | None = None,
                  ops: Iterable[str] = tuple(OP_TABLES), root: Path | None = None,
                  max_rows: int | None = None, seed: int = 0):
    """One microbenchmark trace (specmoe.measure trace object) of a GPU × backend's tables.
    `max_rows` keeps a seeded random subset per op (for fixtures and quick fits)."""
    import pandas as pd

    root = root or data_root()
    if gpu not in available_gpus(root):
        raise SpecMoEError(f"gpu={gpu!r}: allowed {available_gpus(root)}")
    if backend not in BACKENDS:
        raise SpecMoEError(f"backend={backend!r}: allowed {BACKENDS}")
    version = version or default_version(gpu, backend, root)
    tables, events, device_name = {}, [], None
    for op in ops:
        if op not in OP_TABLES:
            raise SpecMoEError(f"op={op!r}: allowed {tuple(OP_TABLES)}")
        found = table_file(gpu, op, backend, version, root)
        if found is None:
            continue
        path, used = found
        df = pd.read_parquet(path)
        evs = CONVERT[op](df)
        if max_rows is not None and len(evs) > max_rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(evs), max_rows, replace=False))
            evs = [evs[i] for i in keep]
        device_name = device_name or (str(df.device.iloc[0]) if len(df) else None)
        tables[op] = {"file": str(path.relative_to(root)), "backend_version": used,
                      "rows_in_table": len(df), "rows_imported": len(evs),
                      "kernel_sources": sorted({e["kernel_source"] for e in evs})}
        events.extend(evs)
    if not events:
        raise SpecMoEError(f"aiconfigurator {gpu}/{backend}@{version}: no bf16 single-GPU rows of "
                           f"{list(ops)}")
    for i, ev in enumerate(events):   # back-to-back on one stream, for viewers
        ev["ts_us"] = float(i)
    header = {"schema": "specmoe.trace/1", "source": "table",
              "device": {"type": "cuda", "name": device_name, "system": gpu,
                         "profile": GPU_PROFILES.get(gpu)},
              "model": None, "workload": {}, "policy": {},
              "provenance": {"kind": "public measured tables", "package": PACKAGE,
                             "package_version": package_version(root), "license": LICENSE,
                             "attribution": ATTRIBUTION, "backend": backend,
                             "backend_version": version, "tables": tables,
                             "method": "CUDA-graph replay of one op (aiconfigurator collector)",
                             "routing": "see specmoe.measure.aiconfigurator docstring",
                             "filters": "bf16/fp16 compute, bf16 KV, moe tp=ep=1, window 0, "
                                        "beam 1, "
                                        f"head_dim <= {MAX_HEAD_DIM}"},
              "replay": True}
    return Trace(header=header, events=events, path=Path(f"aiconfigurator:{gpu}:{backend}"))


def write(trace, out: str | Path) -> Path:
    return write_trace(out, trace.header, trace.events)
