"""Measured op tables: interpolate a device's measured latencies inside their range.

A table is keyed by an op and the op's fixed dimensions (a GEMM's n and k; a fused MoE's hidden,
intermediate size, experts, top_k and routing; an attention's heads, kv heads, head dim and
batch) and holds latency against one swept axis (tokens m, tokens, context or sequence length).
Inside [min, max] of that axis for an exact key, the latency is interpolated linearly in
log(axis)–log(time) between the two nearest measurements (aiconfigurator and Vidur query their
tables the same way); anywhere else the fitted cost model answers. `CostModel` consults a Tables
through its `_hybrid` hook and counts which one answered per op (`CostModel.sources`).

Tables are built from measured traces (engine microbenchmarks or imported public tables:
specmoe.measure.aiconfigurator) by `Tables.from_traces`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

OPS = ("gemm", "moe", "attn_decode", "attn_prefill")


def event_entry(ev: dict):
    """(op, key, axis value) of a measured event, or None when it is not a table op."""
    s = ev.get("shape")
    if ev.get("cat") == "gemm" and s and len(s) == 3:
        m, n, k = s
        return "gemm", (float(n), float(k)), float(m)
    if ev.get("cat") == "moe" and ev.get("name") != "moe" and s and len(s) == 3 \
            and ev.get("num_experts") and ev.get("top_k"):
        return ("moe", (float(s[1]), float(s[2]), float(ev["num_experts"]), float(ev["top_k"]),
                        str(ev.get("distribution", "balanced"))), float(ev["tokens"]))
    if ev.get("cat") == "attn" and s and len(s) == 6:
        batch, q, ctx, heads, kv, hd = s
        key = (float(heads), float(kv), float(hd), float(batch))
        if ev.get("phase") == "prefill":
            return "attn_prefill", key, float(q)
        return "attn_decode", key, float(ctx)
    return None


class Tables:
    """Measured latencies (seconds) per (op, key), sorted by the swept axis."""

    def __init__(self, entries: Iterable[tuple[str, tuple, float, float]], source: str = ""):
        acc: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for op, key, x, t in entries:
            acc[(op, key)][x].append(t)
        self.source = source
        self.curves: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        for k, by_x in acc.items():
            xs = np.array(sorted(by_x))
            self.curves[k] = (xs, np.array([np.median(by_x[x]) for x in xs]))

    @classmethod
    def from_traces(cls, traces, source: str = "") -> Tables:
        rows = []
        for t in traces:
            for ev in t.events:
                e = event_entry(ev)
                if e is not None and ev["dur_us"] > 0:
                    rows.append((*e, ev["dur_us"] * 1e-6))
        return cls(rows, source)

    def __len__(self) -> int:
        return len(self.curves)

    def curve(self, op: str, key: tuple):
        return self.curves.get((op, _norm(key)))

    def lookup(self, op: str, key: tuple, x):
        """(interpolated seconds, inside mask) for axis values x; key parts may be arrays."""
        x = np.asarray(x, dtype=float)
        parts = [np.asarray(k) if not isinstance(k, str) else np.asarray(k, dtype=object)
                 for k in key]
        shape = np.broadcast_shapes(x.shape, *(p.shape for p in parts))
        xb = np.broadcast_to(x, shape).ravel()
        kb = [np.broadcast_to(p, shape).ravel() for p in parts]
        out, inside = np.full(xb.size, np.nan), np.zeros(xb.size, dtype=bool)
        for i in range(xb.size):
            c = self.curve(op, tuple(k[i] for k in kb))
            if c is None:
                continue
            xs, ts = c
            if xs[0] <= xb[i] <= xs[-1]:
                out[i] = interp_loglog(xb[i], xs, ts)
                inside[i] = True
        return out.reshape(shape), inside.reshape(shape)


def _norm(key: tuple) -> tuple:
    return tuple(k if isinstance(k, str) else float(k) for k in key)


def interp_loglog(x: float, xs: np.ndarray, ts: np.ndarray) -> float:
    """Linear in log(x)–log(t) between the nearest measured neighbours (exact at one)."""
    if len(xs) == 1:
        return float(ts[0])
    return float(np.exp(np.interp(np.log(x), np.log(xs), np.log(ts))))
