"""Measured op events as fitting points: read traces, turn each timed op into a point,
group repeats."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specmoe.errors import SpecMoEError
from specmoe.fit.op_map import OPS, US
from specmoe.inputs.models.spec import DTYPE_BYTES
from specmoe.measure.ingest import device_identity
from specmoe.measure.trace import read_trace

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
