"""Calibration: fit the cost model's parameters (CostParams) to engine traces (DESIGN.md §10).

    specmoe calibrate TRACES... --hardware BASE -o hwprofiles/calibrated/NAME.yaml [--html R.html]

Every timed op event becomes a point: events with the same op and configuration (shape, tokens,
bytes, ...) are repeats, summarised by their median. A point's predicted time comes from the very
CostModel method the analytic model and the simulator call (`OPS` below maps an event to it), so
calibration fits the one cost model and never a second one. Two stages:

1. Op events (microbenchmarks, and the op spans inside end-to-end runs) fit the efficiencies and
   overheads of the ops present: GEMM/expert/attention (gemm_compute_eff, gemm_half_tokens, hbm_eff,
   kernel_overhead_us, attn_eff), copies (link_eff, transfer_setup_us, pageable_eff), CPU experts
   (cpu_compute_eff, cpu_mem_eff, cpu_overhead_us). scipy.optimize.least_squares on relative
   residuals within bounds; k-fold hold-out over distinct configurations ("by shape").
2. End-to-end runs (traces with `iteration` events) fit layer_overhead_us, the per-layer time no op
   span covers (residual adds, host bookkeeping), with stage 1 held fixed; the iteration time is
   predicted by `specmoe.fit.validate.predict_run`, the same predictor `specmoe validate` uses.

A parameter no present op depends on keeps the base profile's value and is listed as fixed.
Bad input raises SpecMoEError naming the file and field: traces from different devices, missing
fields, fewer points than the parameters need, a fit that does not converge.

Event fields read (the engine's microbenchmarks, engine/microbench.py, and its traced runs write
them; dims fall back to the header's `model`, an engine MoEConfig dict with hidden, heads,
kv_heads, head_dim, experts, top_k, expert_ffn, vocab, dtype):
  gemm        shape [m, n, k]: x[m, k] @ W[k, n]                    -> CostModel.gemm
  expert      tokens, shape [tokens, hidden, ffn]: one SwiGLU expert -> CostModel.experts(tokens, 1)
  moe         tokens, experts (distinct), top_k, max_expert_tokens (the busiest expert's;
              default an even spread), gated (default true), shape [tokens, hidden, ffn]
              (else the header
              model's hidden, expert_ffn, top_k): the engine's fused_moe span
              -> CostModel.experts(tokens·top_k, experts); the engine's per-layer span named
              "moe" (fetches + compute + bookkeeping) is a composite and is not fitted
  attn        the engine's attention block (norm, q/k/v/o projections, RoPE, scores), tokens,
              shape [batch, T, context]                              -> CostModel.attention_block
              the microbenchmark's scores-only attention (name "attention", shape [batch, T,
              context, heads, kv_heads, head_dim])                   -> its scores term
  gate        tokens                                                 -> CostModel.router_and_shared
  lm_head     tokens                                                 -> CostModel.lm_head
  h2d         bytes, pinned (default: true on CUDA, where the engine page-locks its host
              weights; false elsewhere), chunk (bytes per copy; default all) -> CostModel.h2d
  cpu_expert  tokens, shape [tokens, hidden, ffn]                    -> CostModel.cpu_expert
  dtype: event `dtype`, else the header model's dtype. `samples_us` (every rep), where present,
  are the repeats; else events with the same op and inputs are. d2h is not fitted (the cost model
  has no D2H entry point yet).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from html import escape as html_escape
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from specmoe.costs.ops import PARAM_NAMES, CostModel, CostParams, declared_params
from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write_text
from specmoe.fit.validate import predict_run
from specmoe.inputs.hardware import System, load_system
from specmoe.inputs.models import from_hf_config
from specmoe.inputs.models.spec import DTYPE_BYTES
from specmoe.measure.ingest import device_identity, group_runs, read_run
from specmoe.measure.trace import read_trace

US = 1e-6

# Which parameters each op's time depends on (a parameter is fitted only if some op present
# needs it).
_GEMM = ("gemm_compute_eff", "gemm_half_tokens", "hbm_eff", "kernel_overhead_us")
OP_PARAMS: dict[str, tuple[str, ...]] = {
    "gemm": _GEMM, "expert": _GEMM, "moe": _GEMM, "gate": _GEMM, "lm_head": _GEMM,
    "attn": _GEMM + ("attn_eff",),
    "attn_scores": ("gemm_compute_eff", "attn_eff", "kernel_overhead_us"),
    "h2d": ("link_eff", "transfer_setup_us", "pageable_eff"),
    "cpu_expert": ("cpu_compute_eff", "cpu_mem_eff", "cpu_overhead_us"),
    "attn_prefill": ("gemm_compute_eff", "attn_eff", "kernel_overhead_us"),
}
# Per op class (FitOptions.groups="per-class", for GPU kernels): dense GEMMs, grouped MoE GEMMs,
# decode attention and prefill attention each get their own efficiencies and fixed times; replayed
# benchmarks (trace header `replay`) add the L2 bandwidth, shared by all.
OP_PARAMS_PER_CLASS: dict[str, tuple[str, ...]] = {
    **OP_PARAMS,
    "moe": ("moe_compute_eff", "moe_half_tokens", "moe_hbm_eff", "moe_kernel_us", "moe_reread"),
    "expert": ("moe_compute_eff", "moe_half_tokens", "moe_hbm_eff", "moe_kernel_us"),
    "attn_scores": ("attn_eff", "attn_fixed_us", "attn_item_us"),
    "attn_prefill": ("prefill_compute_eff", "prefill_half_head_dim", "prefill_item_us",
                     "prefill_fixed_us"),
}
REPLAY_PARAMS = ("l2_bw_factor",)
# Fixed times that only whole iterations show: per layer, and per distinct expert (an engine that
# loops over experts pays it; op events of one expert cannot tell it from the kernel overhead).
E2E_PARAMS = ("layer_overhead_us", "expert_overhead_us")
# Bounds: an efficiency above 1 means the op beat the base profile's peak (e.g. weights that stay
# in a cache faster than the memory the profile names); fixed times in µs.
# GPU efficiencies are fractions of the datasheet peak: at most 1 (a working set served from L2
# has its own term, l2_bw_factor, the L2 bandwidth as a multiple of the HBM peak: published L2
# bandwidths are 2-4x HBM on A100/H100; bounded by 8). The host-memcpy "link" of the CPU profile
# and the CPU's own efficiencies keep a wider bound: their peaks are measured, not datasheet.
BOUNDS = {
    "gemm_compute_eff": (1e-3, 1.0), "gemm_half_tokens": (0.0, 1e4), "hbm_eff": (1e-3, 1.0),
    "attn_eff": (1e-3, 1.0), "kernel_overhead_us": (0.0, 1e5), "layer_overhead_us": (0.0, 1e6),
    "moe_compute_eff": (1e-3, 1.0), "moe_half_tokens": (0.0, 1e4), "moe_hbm_eff": (1e-3, 1.0),
    "moe_kernel_us": (0.0, 1e4), "moe_reread": (0.0, 1.0), "attn_fixed_us": (0.0, 1e4),
    "attn_item_us": (0.0, 1e3), "prefill_compute_eff": (1e-3, 1.0), "prefill_item_us": (0.0, 1e3),
    "prefill_half_head_dim": (0.0, 2048.0), "prefill_fixed_us": (0.0, 1e4),
    "l2_bw_factor": (1.0, 8.0),
    "expert_overhead_us": (0.0, 1e5),
    "link_eff": (1e-3, 4.0), "pageable_eff": (1e-3, 1.0), "transfer_setup_us": (0.0, 1e5),
    "cpu_compute_eff": (1e-3, 4.0), "cpu_mem_eff": (1e-3, 4.0), "cpu_overhead_us": (0.0, 1e5),
}
# Starting points; a second start from the other side of the compute/memory corner guards
# against the kink of the roofline's max().
STARTS = (
    {
        "gemm_compute_eff": 0.5,
        "gemm_half_tokens": 8.0,
        "hbm_eff": 0.5,
        "attn_eff": 0.5,
        "kernel_overhead_us": 5.0,
        "expert_overhead_us": 5.0,
        "layer_overhead_us": 10.0,
        "link_eff": 0.7,
        "pageable_eff": 0.5,
        "transfer_setup_us": 5.0,
        "cpu_compute_eff": 0.5,
        "cpu_mem_eff": 0.5,
        "cpu_overhead_us": 5.0,
        "moe_compute_eff": 0.5,
        "moe_half_tokens": 8.0,
        "moe_hbm_eff": 0.5,
        "moe_kernel_us": 5.0,
        "moe_reread": 0.1,
        "attn_fixed_us": 5.0,
        "attn_item_us": 1.0,
        "prefill_compute_eff": 0.5,
        "prefill_item_us": 1.0,
        "prefill_half_head_dim": 32.0,
        "prefill_fixed_us": 5.0,
        "l2_bw_factor": 2.0,
    },
    {
        "gemm_compute_eff": 0.1,
        "gemm_half_tokens": 64.0,
        "hbm_eff": 1.0,
        "attn_eff": 1.0,
        "kernel_overhead_us": 50.0,
        "expert_overhead_us": 50.0,
        "layer_overhead_us": 100.0,
        "link_eff": 0.3,
        "pageable_eff": 0.9,
        "transfer_setup_us": 20.0,
        "cpu_compute_eff": 0.1,
        "cpu_mem_eff": 1.0,
        "cpu_overhead_us": 50.0,
        "moe_compute_eff": 0.1,
        "moe_half_tokens": 64.0,
        "moe_hbm_eff": 0.9,
        "moe_kernel_us": 20.0,
        "moe_reread": 0.5,
        "attn_fixed_us": 20.0,
        "attn_item_us": 5.0,
        "prefill_compute_eff": 0.2,
        "prefill_item_us": 5.0,
        "prefill_half_head_dim": 128.0,
        "prefill_fixed_us": 20.0,
        "l2_bw_factor": 4.0,
    },
)
# Trace sources that are measurements: our engine's, and imported public tables
MEASURED_SOURCES = ("engine", "table")


def load_traces(paths: Sequence[str | Path]):
    """Read traces and check they come from one device (header.device) of the engine."""

    if not paths:
        raise SpecMoEError("calibrate: no trace files given")
    traces = [read_trace(p) for p in paths]
    first = None
    for t in traces:
        dev = t.header.get("device")
        if not isinstance(dev, dict) or not dev.get("name"):
            raise SpecMoEError(f"trace {t.path}: header field 'device' lacks a fingerprint with "
                               "'name' (calibration ties fitted parameters to one device)")
        if t.source not in MEASURED_SOURCES:
            raise SpecMoEError(f"trace {t.path}: source={t.source!r}; calibration needs measured "
                               f"traces (source {MEASURED_SOURCES})")
        ident = device_identity(dev)
        if first is None:
            first = (t.path, ident)
        elif ident != first[1]:
            diff = {
                k: (first[1].get(k), ident.get(k)) for k in ident if first[1].get(k) != ident.get(k)
            }
            raise SpecMoEError(
                f"traces from different devices in one fit: {first[0]} vs {t.path} "
                f"differ in header.device {diff}; calibrate each device separately"
            )
    return traces


# ------------------------------------------------------------------------------------ points

@dataclass
class Point:
    """One op configuration: its repeats' median time and the inputs of its cost-model call."""

    cat: str
    dims: tuple          # model dims the CostModel needs (see _spec)
    args: tuple          # the op's numeric inputs (see OPS)
    times_s: list[float] = field(default_factory=list)
    files: set[str] = field(default_factory=set)

    @property
    def measured_s(self) -> float:
        return self.quantile(0.5)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.times_s, q))

    @property
    def spread(self) -> float:
        """Interquartile range over median of the repeats: the measurement's own noise."""
        if len(self.times_s) < 4:
            return float("nan")
        q1, q3 = np.percentile(self.times_s, [25, 75])
        return float((q3 - q1) / np.median(self.times_s))

    def label(self) -> str:
        names = OPS[self.cat].arg_names
        dims = "[" + "x".join(f"{d:g}" for d in self.dims[1:]) + "]" if len(self.dims) > 1 else ""
        return (
            f"{self.cat}{dims}(" + ", ".join(f"{n}={v:g}" for n, v in zip(names, self.args)) + ")"
        )


def _need(ev: dict, key: str, where: str):
    if ev.get(key) is None:
        raise SpecMoEError(f"{where}: {ev['cat']} event {ev['name']!r} lacks field {key!r} "
                           "(see specmoe.fit.calibrate's docstring for the fields each op needs)")
    return ev[key]


def _shape(ev: dict, n: int, where: str) -> list:
    s = _need(ev, "shape", where)
    if (
        not isinstance(s, (list, tuple))
        or len(s) != n
        or not all(isinstance(x, (int, float)) for x in s)
    ):
        raise SpecMoEError(f"{where}: {ev['cat']} event field 'shape'={s!r}: expected {n} numbers")
    return list(s)


def _dtype_bytes(ev: dict, model: dict, where: str) -> float:
    name = ev.get("dtype") or model.get("dtype")
    if name is None:
        raise SpecMoEError(f"{where}: {ev['cat']} event lacks field 'dtype' and the header has "
                           "no model.dtype")
    name = str(name).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise SpecMoEError(
            f"{where}: dtype={name!r} is not modelled; allowed {sorted(DTYPE_BYTES)}"
        )
    return float(DTYPE_BYTES[name])


def _dim(ev: dict, model: dict, key: str, where: str) -> int:
    v = ev.get(key, model.get(key))
    if v is None:
        raise SpecMoEError(f"{where}: {ev['cat']} event lacks field {key!r} and the header's "
                           f"model has none")
    return int(v)


def _header_model(header: dict) -> dict:
    m = header.get("model")
    return m if isinstance(m, dict) else {}


def _event_point(ev: dict, header: dict, where: str) -> tuple[str, tuple, tuple] | None:
    """(op, dims, args) of a timed op event, or None for events calibration does not fit."""
    cat, model = ev["cat"], _header_model(header)
    if cat not in OPS or (cat == "moe" and ev["name"] == "moe"):
        return None
    if cat == "h2d":
        nbytes = float(_need(ev, "bytes", where))
        chunk = float(ev.get("chunk") or nbytes or 1)
        pinned = ev.get("pinned", (header.get("device") or {}).get("type") == "cuda")
        return cat, (), (nbytes, float(max(1, math.ceil(nbytes / chunk))), 1.0 if pinned else 0.0)
    b = _dtype_bytes(ev, model, where)
    if cat == "gemm":
        m, n, k = _shape(ev, 3, where)
        return cat, (b,), (float(m), float(n), float(k))
    if cat == "moe":  # the engine's fused_moe span: tokens, experts; dims from the header model
        tokens = float(_need(ev, "tokens", where))
        if ev.get("shape") is not None:
            _, hidden, ffn = _shape(ev, 3, where)
        else:
            hidden, ffn = _dim(ev, model, "hidden", where), _dim(ev, model, "expert_ffn", where)
        k = _dim(ev, model, "top_k", where)
        distinct = float(_need(ev, "experts", where))
        busiest = float(ev.get("max_expert_tokens") or tokens * k / max(distinct, 1e-9))
        gated = 0.0 if ev.get("gated") is False else 1.0   # non-gated experts: two matrices
        return cat, (b, int(hidden), int(ffn), gated), (tokens * k, distinct, busiest)
    if cat in ("expert", "cpu_expert"):
        _, hidden, ffn = _shape(ev, 3, where)
        return cat, (b, int(hidden), int(ffn)), (float(_need(ev, "tokens", where)),)
    tokens = float(_need(ev, "tokens", where))
    if cat == "attn":
        shape = _need(ev, "shape", where)
        if isinstance(shape, (list, tuple)) and len(shape) == 6:   # microbenchmark: scores only
            batch, q, context, heads, kv, hd = _shape(ev, 6, where)
            dims = (b, int(heads * hd), int(heads), int(kv), int(hd))
            if ev.get("phase") == "prefill":    # causal attention over q new tokens
                return "attn_prefill", dims, (tokens, float(batch), float(q))
            return "attn_scores", dims, (tokens, float(batch), float(context))
        batch, _, context = _shape(ev, 3, where)
        dims = tuple(_dim(ev, model, k, where) for k in ("hidden", "heads", "kv_heads", "head_dim"))
        return cat, (b, *dims), (tokens, float(batch), float(ev.get("context", context)))
    if cat == "gate":
        if int(model.get("shared_expert_ffn") or 0):
            return None  # with shared experts the gate span is not the whole router_and_shared op
        return (
            cat,
            (b, _dim(ev, model, "hidden", where), _dim(ev, model, "experts", where)),
            (tokens,),
        )
    if cat == "lm_head":
        return (
            cat,
            (b, _dim(ev, model, "hidden", where), _dim(ev, model, "vocab", where)),
            (tokens,),
        )
    return None


def _samples_s(ev: dict, where: str) -> list[float]:
    """The event's repeats in seconds: `samples_us` where the microbenchmark kept them,
    else dur_us."""
    vals = ev.get("samples_us") or [ev["dur_us"]]
    for v in vals:
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            field_name = "samples_us" if ev.get("samples_us") else "dur_us"
            raise SpecMoEError(f"{where}: {ev['cat']} event field {field_name!r} holds {v!r}: "
                               "durations must be > 0")
    return [v * US for v in vals]


def collect_points(traces, min_samples: int = 1) -> list[Point]:
    """Op points from every trace, repeats merged (same op, dims and inputs); configurations seen
    fewer than `min_samples` times are dropped (no usable median on a noisy machine)."""
    points: dict[tuple, Point] = {}
    for t in traces:
        for i, ev in enumerate(t.events):
            where = f"{t.path} event {i + 1}"
            p = _event_point(ev, t.header, where)
            if p is None or p[2][0] <= 0:
                continue  # not an op calibration fits, or an op with no work (tokens/bytes 0)
            pt = points.setdefault(p, Point(*p))
            pt.times_s.extend(_samples_s(ev, where))
            pt.files.add(str(t.path))
    kept = [p for p in points.values() if len(p.times_s) >= min_samples]
    return sorted(kept, key=lambda q: (q.cat, q.dims, q.args))


# ------------------------------------------------------------------------- the cost-model mapping

@lru_cache(maxsize=512)
def _spec(dtype_bytes: float, hidden: int = 64, ffn: int = 64, heads: int = 1, kv_heads: int = 1,
          head_dim: int = 64, experts: int = 8, top_k: int = 2, vocab: int = 64, layers: int = 1,
          shared_ffn: int = 0, gated: bool = True):
    """A ModelSpec with just the dims an op needs (one op = one layer's worth)."""

    cfg = {
        "model_type": "qwen2_moe" if shared_ffn else "mixtral",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "num_experts_per_tok": min(top_k, experts),
        "_specmoe": {
            "name": "calibration-op",
            "dtype_bytes": dtype_bytes,
            "expert_dtype_bytes": dtype_bytes,
            "kv_dtype_bytes": dtype_bytes,
        },
    }
    if shared_ffn:
        cfg.update(num_experts=experts, moe_intermediate_size=ffn, intermediate_size=ffn,
                   shared_expert_intermediate_size=shared_ffn)
    else:
        cfg.update(num_local_experts=experts, intermediate_size=ffn)
    spec = from_hf_config(cfg)
    return spec if gated else replace(spec, gated_ffn=False)


def _gemm(cm: CostModel, a: np.ndarray) -> np.ndarray:
    m, n, k = a.T
    return cm.dense_gemm(m, n, k)


def _h2d(cm: CostModel, a: np.ndarray) -> np.ndarray:
    nbytes, copies, pinned = a.T
    return np.where(pinned > 0, cm.h2d(nbytes, copies, True), cm.h2d(nbytes, copies, False))


def _attn_scores(cm: CostModel, a: np.ndarray) -> np.ndarray:
    tokens, batch, context = a.T
    return cm.attention_scores(tokens, batch, context)


def _attn_prefill(cm: CostModel, a: np.ndarray) -> np.ndarray:
    _, batch, seq = a.T
    return cm.prefill_attention(batch, seq)


@dataclass(frozen=True)
class Op:
    """How one event category is predicted: the CostModel call and the spec its dims describe."""

    arg_names: tuple[str, ...]
    spec: Callable[..., Any]
    call: Callable[[CostModel, np.ndarray], np.ndarray]


OPS: dict[str, Op] = {
    "gemm": Op(("m", "n", "k"), lambda b: _spec(b), _gemm),
    "expert": Op(
        ("tokens",),
        lambda b, h, f: _spec(b, hidden=h, ffn=f),
        lambda cm, a: cm.experts(a[:, 0], 1.0),
    ),
    "moe": Op(
        ("pairs", "distinct", "busiest"),
        lambda b, h, f, g=1.0: _spec(b, hidden=h, ffn=f, gated=bool(g)),
        lambda cm, a: cm.experts(a[:, 0], a[:, 1], a[:, 2]),
    ),
    "cpu_expert": Op(
        ("tokens",), lambda b, h, f: _spec(b, hidden=h, ffn=f), lambda cm, a: cm.cpu_expert(a[:, 0])
    ),
    "attn": Op(
        ("tokens", "batch", "context"),
        lambda b, h, nh, kv, hd: _spec(b, hidden=h, heads=nh, kv_heads=kv, head_dim=hd),
        lambda cm, a: cm.attention_block(a[:, 0], a[:, 1], a[:, 2]),
    ),
    "attn_scores": Op(
        ("tokens", "batch", "context"),
        lambda b, h, nh, kv, hd: _spec(b, hidden=h, heads=nh, kv_heads=kv, head_dim=hd),
        _attn_scores,
    ),
    "attn_prefill": Op(
        ("tokens", "batch", "seq"),
        lambda b, h, nh, kv, hd: _spec(b, hidden=h, heads=nh, kv_heads=kv, head_dim=hd),
        _attn_prefill,
    ),
    "gate": Op(
        ("tokens",),
        lambda b, h, e: _spec(b, hidden=h, experts=e),
        lambda cm, a: cm.router_and_shared(a[:, 0]),
    ),
    "lm_head": Op(
        ("tokens",), lambda b, h, v: _spec(b, hidden=h, vocab=v), lambda cm, a: cm.lm_head(a[:, 0])
    ),
    "h2d": Op(("bytes", "chunks", "pinned"), lambda: _spec(2.0), _h2d),
}


class OpPredictor:
    """Predicted seconds of every point for given CostParams, one CostModel per (op, dims) group."""

    def __init__(self, points: Sequence[Point], system, replay: bool = False):
        self.system = system
        self.replay = replay
        self.n = len(points)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(points):
            groups.setdefault((p.cat, p.dims), []).append(i)
        self.groups = [(cat, OPS[cat].spec(*dims), np.asarray(idx),
                        np.asarray([points[i].args for i in idx], dtype=float))
                       for (cat, dims), idx in groups.items()]

    def __call__(self, params: CostParams) -> np.ndarray:
        out = np.empty(self.n)
        for cat, spec, idx, args in self.groups:
            out[idx] = OPS[cat].call(CostModel(spec, self.system, params, replay=self.replay), args)
        return out


def param_map(groups: str = "shared", replay: bool = False) -> dict[str, tuple[str, ...]]:
    """Which parameters each op depends on: one GEMM group for all ("shared", the engine traces'
    default) or a group per op class ("per-class"); replayed benchmarks add the L2 bandwidth."""
    base = OP_PARAMS_PER_CLASS if groups == "per-class" else OP_PARAMS
    gpu_ops = ("gemm", "moe", "expert", "attn_scores", "attn_prefill")
    return {c: v + (REPLAY_PARAMS if replay and c in gpu_ops else ()) for c, v in base.items()}


def params_needed(points: Sequence[Point], pmap: dict | None = None) -> list[str]:
    pmap = pmap or OP_PARAMS
    names = {n for p in points for n in pmap[p.cat]}
    pinned = {p.args[2] for p in points if p.cat == "h2d"}
    if pinned != {0.0, 1.0}:  # pageable_eff is a ratio: only copies of both kinds separate it
        names.discard("pageable_eff")
    return [n for n in PARAM_NAMES if n in names]


# ------------------------------------------------------------------------------------ fitting

@dataclass
class Fit:
    names: list[str]
    values: np.ndarray
    stderr: np.ndarray
    at_bound: list[bool]
    rms_rel: float
    nfev: int
    message: str
    degenerate: list[str] = field(default_factory=list)  # only a combination of these is determined


def _check_enough(cats: Sequence[str], names: Sequence[str], what: str,
                  pmap: dict | None = None) -> None:
    """Each parameter needs more points than unknowns among the ops that inform it."""

    pmap = pmap or OP_PARAMS
    count = Counter(cats)
    for name in names:
        informing = [c for c in count if name in pmap.get(c, E2E_PARAMS)]
        n_points = sum(count[c] for c in informing)
        unknowns = len({q for c in informing for q in pmap.get(c, E2E_PARAMS)} & set(names))
        need = unknowns + 2
        if n_points < need:
            raise SpecMoEError(
                f"{what}: too few points for parameter {name!r}: {n_points} distinct "
                f"configurations of {sorted(informing)} for {unknowns} parameters; need at least "
                f"{need} (add sizes/shapes to the microbenchmarks)")


@dataclass(frozen=True)
class FitOptions:
    """How to fit. `fix` holds parameters at a value (None: the base profile's) instead of fitting
    them, e.g. a per-copy setup time that copies of a single size cannot separate from bandwidth."""

    folds: int = 5
    loss: str = "soft_l1"     # robust: one configuration hit by a descheduled thread does not rule
    f_scale: float = 0.1      # residuals beyond 10% count linearly, not squared
    min_samples: int = 1
    # Which quantile of the repeats a point's time is: the median, or a low one on a machine shared
    # with other work, where interference only ever adds time (the fastest repeats are the device's)
    quantile: float = 0.5
    # Whose op events fit stage 1: every trace's, or only the microbenchmarks' / the runs'
    op_traces: str = "all"
    fix: tuple[tuple[str, float | None], ...] = ()
    max_nfev: int | None = None
    # "shared": one efficiency group for every weight GEMM (the engine's CPU traces); "per-class":
    # dense GEMM, grouped MoE, decode and prefill attention each their own (GPU kernel tables)
    groups: str = "shared"

    def __post_init__(self):
        if self.folds < 2:
            raise SpecMoEError(f"folds={self.folds}: need at least 2 for a hold-out")
        if self.op_traces not in ("all", "microbenchmark", "end-to-end"):
            raise SpecMoEError(
                f"op_traces={self.op_traces!r}: allowed all, microbenchmark, end-to-end"
            )
        if self.groups not in ("shared", "per-class"):
            raise SpecMoEError(f"groups={self.groups!r}: allowed shared, per-class")
        if not 0.0 <= self.quantile <= 1.0:
            raise SpecMoEError(f"quantile={self.quantile}: allowed [0, 1]")
        bad = [n for n, _ in self.fix if n not in PARAM_NAMES]
        if bad:
            raise SpecMoEError(f"fix: unknown parameter(s) {bad}; allowed {PARAM_NAMES}")


def least_squares_fit(predict: Callable[[CostParams], np.ndarray], measured: np.ndarray,
                      names: list[str], base: CostParams, what: str, opts: FitOptions) -> Fit:
    """Relative-residual least squares within BOUNDS, best of STARTS;
    raises if it does not converge."""

    lo = np.array([BOUNDS[n][0] for n in names])
    hi = np.array([BOUNDS[n][1] for n in names])

    def resid(x):
        pred = predict(replace(base, **dict(zip(names, map(float, x)))))
        return (pred - measured) / measured

    best = None
    for start in STARTS:
        x0 = np.clip([start[n] for n in names], lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        with np.errstate(all="ignore"):
            res = least_squares(
                resid,
                x0,
                bounds=(lo, hi),
                x_scale="jac",
                loss=opts.loss,
                f_scale=opts.f_scale,
                max_nfev=opts.max_nfev or 200 * (len(names) + 1),
            )
        if res.status <= 0 or not np.all(np.isfinite(res.fun)):
            raise SpecMoEError(f"{what}: the fit of {names} did not converge ({res.message}; "
                               f"status {res.status} after {res.nfev} evaluations)")
        if best is None or res.cost < best.cost:
            best = res
    m, n = len(measured), len(names)
    # Approximate 1σ from the Gauss-Newton Hessian (scipy scales jac for robust losses); a
    # direction the data cannot see (a near-zero singular value of the Jacobian, columns scaled
    # to the parameters' sizes) makes its parameters degenerate: their 1σ is infinite.
    s2 = 2 * best.cost / max(m - n, 1)
    cov = np.linalg.pinv(best.jac.T @ best.jac) * s2
    stderr = np.sqrt(np.clip(np.diag(cov), 0, None))
    scale = np.maximum(np.abs(best.x), [0.01 if BOUNDS[q][1] <= 10 else 1.0 for q in names])
    _, sv, vt = np.linalg.svd(best.jac * scale, full_matrices=False)
    null = vt[sv < 1e-6 * max(sv.max(), 1e-300)]
    degenerate = sorted({names[j] for v in null for j in np.flatnonzero(np.abs(v) > 0.1)},
                        key=names.index)
    stderr[[names.index(q) for q in degenerate]] = np.inf
    at = [bool(np.isclose(v, a, rtol=1e-6, atol=1e-9) or np.isclose(v, b, rtol=1e-6, atol=1e-9))
          for v, a, b in zip(best.x, lo, hi)]
    return Fit(list(names), best.x, stderr, at, float(np.sqrt(np.mean(best.fun ** 2))),
               int(best.nfev), str(best.message), degenerate)


def folds_by_shape(cats: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold of each point: within each op,
    distinct configurations dealt round-robin after a shuffle,
    so every fold holds out whole configurations of every op."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(cats), dtype=int)
    for cat in sorted(set(cats)):
        idx = np.flatnonzero(np.asarray(cats) == cat)
        rng.shuffle(idx)
        out[idx] = (np.arange(len(idx)) + rng.integers(k)) % k
    return out


@dataclass
class Stage:
    """One stage's fit and its hold-out predictions (per point)."""

    fit: Fit
    labels: list[str]
    cats: list[str]
    measured: np.ndarray
    predicted: np.ndarray     # full fit, in sample
    holdout: np.ndarray       # each point predicted by the fit of the folds that left it out
    spread: np.ndarray
    folds: int
    unidentified: list[str] = field(default_factory=list)

    def mape(self, which: str = "holdout") -> dict[str, dict[str, float]]:
        pred = self.holdout if which == "holdout" else self.predicted
        err = np.abs(pred - self.measured) / self.measured
        out = {}
        for cat in sorted(set(self.cats)):
            sel = np.asarray(self.cats) == cat
            out[cat] = {
                "mape": float(np.mean(err[sel])),
                "max": float(np.max(err[sel])),
                "points": int(sel.sum()),
                "noise": float(np.nanmedian(self.spread[sel]))
                if np.any(np.isfinite(self.spread[sel]))
                else None,
            }
        return out


def fit_stage(predict: Callable[[CostParams], np.ndarray], measured: np.ndarray, cats: list[str],
              labels: list[str], spread: np.ndarray, names: list[str], base: CostParams,
              opts: FitOptions, what: str, pmap: dict | None = None) -> Stage:
    _check_enough(cats, names, what, pmap)
    full = least_squares_fit(predict, measured, names, base, what, opts)
    dead = unidentified(predict, full, base)
    if dead:  # keep the base value of what the data cannot see, fit the rest again
        names = [n for n in names if n not in dead]
        full = least_squares_fit(predict, measured, names, base, what, opts)
    params = replace(base, **dict(zip(names, map(float, full.values))))
    predicted = predict(params)
    holdout = np.full(len(measured), np.nan)
    k = min(opts.folds, len(measured))
    assign = folds_by_shape(cats, k)
    for f in range(k):
        test = assign == f
        if not test.any():
            continue
        train = ~test

        def sub(p, train=train):
            return predict(p)[train]

        fit = least_squares_fit(
            sub, measured[train], names, base, f"{what} (hold-out fold {f + 1}/{k})", opts
        )
        holdout[test] = predict(replace(base, **dict(zip(names, map(float, fit.values)))))[test]
    return Stage(full, labels, cats, measured, predicted, holdout, spread, k, dead)


def unidentified(predict: Callable[[CostParams], np.ndarray], fit: Fit, base: CostParams,
                 threshold: float = 1e-3) -> list[str]:
    """Parameters whose 10% change (or 1 unit from 0) moves no prediction by `threshold` relative:
    e.g. a compute efficiency when every point is memory-bound. Their fitted value means nothing."""
    x = dict(zip(fit.names, map(float, fit.values)))
    ref = predict(replace(base, **x))
    dead = []
    for n, v in x.items():
        lo, hi = BOUNDS[n]
        step = max(0.1 * abs(v), 1.0 if hi > 10 else 0.01)
        moved = min(v + step, hi) if v + step <= hi else max(v - step, lo)
        change = np.abs(predict(replace(base, **{**x, n: moved})) / ref - 1.0)
        if np.max(change) < threshold:
            dead.append(n)
    return dead


# ------------------------------------------------------------------------------------ calibration

@dataclass
class Calibration:
    system: Any                     # the calibrated System
    ops: Stage | None
    e2e: Stage | None
    fixed: dict[str, Any]
    traces: list[dict]

    def unidentified(self) -> list[str]:
        return [n for st in (self.ops, self.e2e) if st is not None for n in st.unidentified]

    def holdout_mape(self) -> dict[str, dict[str, float]]:
        out = {}
        for st in (self.ops, self.e2e):
            if st is not None:
                out.update(st.mape("holdout"))
        return out


def _stage_params(stage: Stage | None) -> dict[str, dict]:
    if stage is None:
        return {}
    f = stage.fit
    return {n: {"value": float(v), "stderr": float(s) if np.isfinite(s) else None, "at_bound": a,
                "degenerate": n in f.degenerate, "bounds": list(BOUNDS[n])}
            for n, v, s, a in zip(f.names, f.values, f.stderr, f.at_bound)}


def _kind(t) -> str:
    return "end-to-end" if t.by_cat("iteration") else "microbenchmark"


def _file_info(t) -> dict:
    data = Path(t.path).read_bytes()
    return {"file": str(t.path), "sha256": hashlib.sha256(data).hexdigest()[:16],
            "events": len(t.events), "kind": _kind(t)}


def calibrate(trace_paths: Sequence[str | Path], hardware, name: str | None = None,
              opts: FitOptions | None = None, command: str | None = None) -> Calibration:
    """Fit a calibrated System from traces; `hardware` is the base system (name, path or System)."""

    opts = opts or FitOptions()
    base_system = hardware if isinstance(hardware, System) else load_system(hardware)
    traces = load_traces(trace_paths)
    fix = dict(opts.fix)
    base = replace(declared_params(base_system), **{k: v for k, v in fix.items() if v is not None})
    op_sources = [t for t in traces if opts.op_traces in ("all", _kind(t))]
    points = collect_points(op_sources, opts.min_samples)
    if not points:
        raise SpecMoEError(f"calibrate: no timed op events (cats {sorted(OPS)}) with at least "
                           f"{opts.min_samples} sample(s) in {[str(t.path) for t in traces]}")
    replay = any(t.header.get("replay") for t in op_sources)
    pmap = param_map(opts.groups, replay)
    names = [n for n in params_needed(points, pmap) if n not in fix]
    ops = fit_stage(OpPredictor(points, base_system, replay),
                    np.array([p.quantile(opts.quantile) for p in points]),
                    [p.cat for p in points], [p.label() for p in points],
                    np.array([p.spread for p in points]), names, base, opts, "calibrate (ops)",
                    pmap)
    params = replace(base, **dict(zip(ops.fit.names, map(float, ops.fit.values))))
    e2e = None if "layer_overhead_us" in fix else _fit_e2e(traces, base_system, params, opts)
    if e2e is not None:
        params = replace(params, **dict(zip(e2e.fit.names, map(float, e2e.fit.values))))
    fitted = set(ops.fit.names) | (set(e2e.fit.names) if e2e else set())
    fixed = {n: getattr(params, n) for n in PARAM_NAMES if n not in fitted}
    calib = Calibration(None, ops, e2e, fixed, [_file_info(t) for t in traces])
    calib.system = _calibrated_system(base_system, params, fitted | set(fix), calib, traces, name,
                                      command, opts)
    return calib


def _fit_e2e(traces, system, params: CostParams, opts: FitOptions) -> Stage | None:

    groups = group_runs([read_run(t) for t in traces if t.by_cat("iteration")])
    if not groups:
        return None
    firsts = [g[0] for g in groups]   # repeats share a configuration; the first one's workload

    def predict(p: CostParams) -> np.ndarray:
        return np.array([predict_run(r, system, params=p, predictor="analytic")["iteration_s"]
                         for r in firsts])

    # one point per configuration: the quantile over its repeats of the mean iteration time, its
    # noise the spread of the repeats (or of one run's iterations when it ran once)
    measured = np.array(
        [np.quantile([r.mean_iteration_s for r in g], opts.quantile) for g in groups]
    )
    spread = np.array(
        [
            (max(r.mean_iteration_s for r in g) - min(r.mean_iteration_s for r in g)) / m
            if len(g) > 1
            else g[0].iteration_spread
            for g, m in zip(groups, measured)
        ]
    )
    return fit_stage(
        predict,
        measured,
        ["iteration"] * len(groups),
        [r.label() for r in firsts],
        spread,
        list(E2E_PARAMS),
        params,
        opts,
        "calibrate (end-to-end)",
    )


def _calibrated_system(
    base_system,
    params: CostParams,
    fitted: set,
    calib: Calibration,
    traces,
    name: str | None,
    command: str | None,
    opts: FitOptions,
):
    # None (transfer_setup_us held at the link profile's value) stays out: the profile keeps it
    eff = {
        n: float(getattr(params, n))
        for n in PARAM_NAMES
        if (n in fitted or n in (base_system.efficiency or {})) and getattr(params, n) is not None
    }
    dev = traces[0].header["device"]
    versions = sorted(
        {(t.header["device"].get("torch"), t.header["device"].get("triton")) for t in traces},
        key=str,
    )
    provenance = {
        "tool": "specmoe.fit.calibrate",
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "command": command,
        "base": base_system.name,
        "device": dev,
        "device_identity": device_identity(dev),
        "software": [{"torch": a, "triton": b} for a, b in versions],
        "traces": calib.traces,
        "parameters": {**_stage_params(calib.ops), **_stage_params(calib.e2e)},
        "fixed": {k: v for k, v in calib.fixed.items()},
        "unidentified": calib.unidentified(),
        "options": {
            "loss": opts.loss,
            "f_scale": opts.f_scale,
            "min_samples": opts.min_samples,
            "quantile": opts.quantile,
            "op_traces": opts.op_traces,
            "fix": dict(opts.fix),
            "folds": opts.folds,
            "groups": opts.groups,
        },
        "holdout": {
            "folds": calib.ops.folds if calib.ops else None,
            "by": "distinct op configuration",
            "mape": {
                k: {kk: (round(vv, 5) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                for k, v in calib.holdout_mape().items()
            },
        },
        "fit": {
            st: {
                "rms_relative_residual": s.fit.rms_rel,
                "evaluations": s.fit.nfev,
                "message": s.fit.message,
            }
            for st, s in (("ops", calib.ops), ("end_to_end", calib.e2e))
            if s is not None
        },
    }
    data = base_system.model_dump()
    data.update(
        name=name or f"{base_system.name}-calibrated", efficiency=eff, calibration=provenance
    )
    data["sources"] = {
        **(base_system.sources or {}),
        "efficiency": f"fitted by specmoe.fit.calibrate on {len(traces)} trace(s) from "
        f"{dev.get('name')} ({provenance['date']})",
    }
    return type(base_system).model_validate(data)


def transfer(calibrated, target, name: str | None = None):
    """Cross-device prediction: the target's datasheet profile with another device's fitted
    efficiencies (DESIGN.md §10.4). Validate it against the target's own traces."""

    src = calibrated if isinstance(calibrated, System) else load_system(calibrated)
    dst = target if isinstance(target, System) else load_system(target)
    if not src.calibration:
        raise SpecMoEError(
            f"transfer: {src.name!r} has no calibration block; give a calibrated profile"
        )
    data = dst.model_dump()
    data.update(name=name or f"{dst.name}-from-{src.name}", efficiency=dict(src.efficiency),
                calibration={"tool": "specmoe.fit.calibrate.transfer", "transferred_from": src.name,
                             "source_device_identity": src.calibration.get("device_identity"),
                             "source_date": src.calibration.get("date"),
                             "holdout_on_source": src.calibration.get("holdout")})
    return type(dst).model_validate(data)


# ------------------------------------------------------------------------------------ reports

def holdout_table(calib: Calibration) -> list[dict[str, Any]]:
    rows = []
    for cat, m in calib.holdout_mape().items():
        rows.append({"op": cat, "points": m["points"], "holdout_mape_pct": 100 * m["mape"],
                     "holdout_max_pct": 100 * m["max"],
                     "noise_pct": None if m["noise"] is None else 100 * m["noise"]})
    return rows


def params_table(calib: Calibration) -> list[dict[str, Any]]:
    p = calib.system.calibration["parameters"]
    return [{"parameter": n, "value": v["value"], "stderr": v["stderr"], "at_bound": v["at_bound"],
             "degenerate": v["degenerate"]} for n, v in p.items()]


LARGE_HOLDOUT_PCT = 25.0   # hold-out MAPE above this: the fitted op times are not to be trusted


def fit_warnings(calib: Calibration, large_pct: float = LARGE_HOLDOUT_PCT) -> list[str]:
    """Plain warnings: parameters stuck at a bound of their range, and ops whose hold-out error is
    large. Either means the traces did not determine the profile;
    its numbers are not measurements."""
    out = []
    params = calib.system.calibration["parameters"]
    for name, v in params.items():
        if v["at_bound"] and not v["degenerate"]:
            lo, hi = v.get("bounds", (None, None))
            side = (
                "upper"
                if hi is not None and abs(v["value"] - hi) <= abs(v["value"] - (lo or 0))
                else "lower"
            )
            out.append(
                f"{name} = {v['value']:.4g} sits at the {side} bound of its range {lo}..{hi}: "
                "the traces do not pin it down (fit traces of one kind, e.g. the GEMM and expert "
                "microbenchmarks of one run, or --fix it)"
            )
    for r in holdout_table(calib):
        if r["holdout_mape_pct"] > large_pct:
            out.append(
                f"{r['op']}: hold-out error {r['holdout_mape_pct']:.0f}% (over {large_pct:.0f}%): "
                "predictions of this op are not reliable"
            )
    return out


def markdown_tables(calib: Calibration) -> str:
    lines = ["| op | points | hold-out MAPE % | hold-out max % | repeat noise (IQR/median) % |",
             "|---|---:|---:|---:|---:|"]
    for r in holdout_table(calib):
        noise = "-" if r["noise_pct"] is None else f"{r['noise_pct']:.1f}"
        lines.append(f"| {r['op']} | {r['points']} | {r['holdout_mape_pct']:.2f} | "
                     f"{r['holdout_max_pct']:.1f} | {noise} |")
    lines += ["", "| parameter | value | ± (1σ, approx.) | note |", "|---|---:|---:|---|"]
    for r in params_table(calib):
        note = ", ".join(
            w
            for w, on in (
                ("at bound", r["at_bound"]),
                ("degenerate: only a combination is determined", r["degenerate"]),
            )
            if on
        )
        err = "∞" if r["stderr"] is None else f"{r['stderr']:.2g}"
        lines.append(f"| {r['parameter']} | {r['value']:.4g} | {err} | {note} |")
    dead = calib.unidentified()
    degenerate = [r["parameter"] for r in params_table(calib) if r["degenerate"]]
    if degenerate:
        lines += ["", "Degenerate (the traces determine only a combination of these; each value "
                  "alone is not a measurement): " + ", ".join(degenerate)]
    if dead:
        lines += ["", "Not identifiable from these traces (no prediction moves with them; base "
                  "profile values kept): " + ", ".join(dead)]
    rest = {k: v for k, v in calib.fixed.items() if k not in dead}
    if rest:
        lines += ["", "Not fitted (fixed, or no op in the traces depends on them): "
                  + ", ".join(f"{k}={v}" for k, v in rest.items())]
    return "\n".join(lines)


def markdown_html(text: str) -> str:
    """The Markdown of `markdown_tables` as HTML: pipe tables become tables,
    other lines paragraphs."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            out.append("<table><tr>" + "".join(f"<th>{html_escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html_escape(c)}</td>" for c in r) + "</tr>"
                                 for r in body) + "</table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html_escape(line)}</p>")
    flush()
    return "\n".join(out)


def write_html(calib: Calibration, path: str | Path, plotlyjs: str | bool = "cdn") -> Path:
    """Parity plots (hold-out predicted vs measured, log-log) per stage, plus the tables.

    plotlyjs: "cdn" links plotly.js (small files for committed reports; needs a network to view),
    True embeds it (opens offline; what `specmoe calibrate --html` writes)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    stages = [
        (t, s)
        for t, s in (("ops (hold-out)", calib.ops), ("end-to-end iteration (hold-out)", calib.e2e))
        if s is not None
    ]
    fig = make_subplots(rows=1, cols=len(stages), subplot_titles=[t for t, _ in stages])
    for col, (_, st) in enumerate(stages, start=1):
        lo = float(min(st.measured.min(), np.nanmin(st.holdout))) * 1e6 * 0.8
        hi = float(max(st.measured.max(), np.nanmax(st.holdout))) * 1e6 * 1.25
        for cat in sorted(set(st.cats)):
            sel = np.asarray(st.cats) == cat
            fig.add_trace(
                go.Scatter(
                    x=st.measured[sel] * 1e6,
                    y=st.holdout[sel] * 1e6,
                    mode="markers",
                    name=cat,
                    text=[l for l, s in zip(st.labels, sel) if s],
                    legendgroup=cat,
                ),
                row=1,
                col=col,
            )
        for f, dash in ((1.0, "solid"), (1.05, "dot"), (0.95, "dot")):
            fig.add_trace(
                go.Scatter(
                    x=[lo, hi],
                    y=[lo * f, hi * f],
                    mode="lines",
                    showlegend=False,
                    line={"color": "grey", "dash": dash, "width": 1},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(type="log", title="measured (µs)", row=1, col=col)
        fig.update_yaxes(type="log", title="predicted (µs)", row=1, col=col)
    dev = calib.system.calibration["device"].get("name")
    fig.update_layout(
        title=f"Calibration {calib.system.name} on {dev}<br><sup>hold-out: predicted against "
        "measured time per op configuration; solid = equal, dotted = ±5%</sup>",
        height=560,
        width=max(900, 560 * len(stages)),
        template="plotly_white",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    esc = html_escape
    intro = (
        "<p>Each dot is one op configuration, left out of the fit and predicted by the parameters "
        "fitted to the others (k-fold hold-out). Dots on the diagonal are predicted exactly; the "
        "tables give the error per op and each fitted parameter with its uncertainty.</p>"
    )
    warn = "".join(f"<p style='color:#a00'>warning: {esc(w)}</p>" for w in fit_warnings(calib))
    page = fig.to_html(include_plotlyjs=plotlyjs, full_html=True)
    style = (
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.45}"
        "table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style>"
    )
    page = page.replace("<head>", "<head><meta charset='utf-8'>" + style, 1)
    page = page.replace(
        "<body>",
        "<body><h1>" + esc(f"specmoe calibration: {calib.system.name}") + "</h1>" + intro + warn,
        1,
    )
    table = markdown_html(markdown_tables(calib))
    atomic_write_text(path, page.replace("</body>", table + "</body>"))
    return path
