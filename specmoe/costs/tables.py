"""Measured op tables: interpolate a device's measured latencies inside their range.

A table is keyed by an op and the op's fixed dimensions (a GEMM's n and k; a fused MoE's hidden,
intermediate size, experts, top_k and routing; an attention's heads, kv heads, head dim and
batch) and holds latency against one swept axis (tokens m, tokens, context or sequence length).
The trailing GRID_DIMS[op] key parts (a GEMM's n and k, an attention's batch) are measured on a
grid: a query between two grid values interpolates between them; the other key parts must match.
Along every axis the latency is interpolated linearly in log(value)–log(time) between the two
nearest measurements (aiconfigurator and Vidur query their tables the same way), and only
inside the measured range: anywhere else the fitted cost model answers. `CostModel` consults a
Tables through its `_hybrid` hook and counts which one answered per op (`CostModel.sources`).

Tables come from measured traces (engine microbenchmarks or imported public tables:
specmoe.measure.aiconfigurator) by `Tables.from_traces`, or from a compact shipped extract
(`save` / `load`: hwprofiles/tables/<gpu>-<backend>.npz, numpy only).
"""
from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from specmoe.fileio import atomic_write

OPS = ("gemm", "moe", "attn_decode", "attn_prefill")
# trailing key parts measured on a grid and interpolated between grid values
GRID_DIMS = {"gemm": 2, "moe": 0, "attn_decode": 1, "attn_prefill": 1}
# the shipped extract stores the MoE routing distribution as an index into this list
DISTRIBUTIONS = ("balanced", "power_law_1.01", "power_law_1.2")
# latency stored as round(LOG_SCALE · ln(µs)): 0.05% worst-case rounding, far below the ~1-2%
# run-to-run noise of the measurements, and it compresses 2x better than float32
LOG_SCALE = 1000.0
# a query this close (relative) to a measured value is that value: float rounding, not a shape
REL_TOL = 1e-6


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
        if q == 1:   # the tables' decode: one query per sequence (verification is not a row)
            return "attn_decode", key, float(ctx)
    return None


class Tables:
    """Measured latencies (seconds) per (op, key), sorted by the swept axis."""

    def __init__(self, entries: Iterable[tuple[str, tuple, float, float]], source: str = "",
                 meta: dict | None = None):
        acc: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for op, key, x, t in entries:
            acc[(op, _norm(key))][float(x)].append(t)
        self.source = source
        self.meta = meta or {}
        self.curves: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        for k, by_x in acc.items():
            xs = np.array(sorted(by_x))
            self.curves[k] = (xs, np.array([np.median(by_x[x]) for x in xs]))
        seen: dict[tuple, list[set]] = {}
        for op, key in self.curves:
            g = GRID_DIMS[op]
            head, grid = key[:len(key) - g], key[len(key) - g:]
            sets = seen.setdefault((op, head), [set() for _ in range(g)])
            for s, v in zip(sets, grid):
                s.add(v)
        # (op, exact key parts) -> sorted values of each grid dimension present
        self._grids = {k: [np.array(sorted(s)) for s in sets] for k, sets in seen.items()}
        self._memo: dict[tuple, float] = {}

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

    def rows(self) -> int:
        return sum(len(xs) for xs, _ in self.curves.values())

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
        out = np.array([self.at(op, tuple(k[i] for k in kb), xb[i]) for i in range(xb.size)])
        out = out.reshape(shape)
        return out, np.isfinite(out)

    def at(self, op: str, key: tuple, x: float) -> float:
        """Seconds at one point, NaN outside what was measured (memoized: planners ask often)."""
        if not np.isfinite(x):
            return float("nan")
        q = (op, _norm(key), float(x))
        if q not in self._memo:
            self._memo[q] = self._interpolate(*q)
        return self._memo[q]

    def _interpolate(self, op: str, key: tuple, x: float) -> float:
        g = GRID_DIMS[op]
        head, grid = key[:len(key) - g], key[len(key) - g:]
        values = self._grids.get((op, head))
        if values is None:
            return float("nan")
        brackets = [_bracket(vals, v) for vals, v in zip(values, grid)]
        if any(b is None for b in brackets):
            return float("nan")
        log_t = 0.0
        for corner in itertools.product(*brackets):
            c = self.curves.get((op, head + tuple(v for v, _ in corner)))
            if c is None or not _covers(c[0], x):
                return float("nan")   # every corner must cover x: no extrapolation
            weight = float(np.prod([w for _, w in corner]))
            log_t += weight * np.log(interp_loglog(x, *c))
        return float(np.exp(log_t))

    # ---- the shipped extract ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """A compact extract: per op int32 key columns + axis, latency as round(1000·ln µs)."""
        arrays: dict[str, np.ndarray] = {}
        for op in OPS:
            rows = [(*_encode(op, key), x, t) for (o, key), (xs, ts) in self.curves.items()
                    if o == op for x, t in zip(xs, ts)]
            if not rows:
                continue
            a = np.array(rows, dtype=float)
            a = a[np.lexsort(a[:, :-1].T[::-1])]
            arrays[f"{op}_key"] = np.rint(a[:, :-1]).astype(np.int32)
            arrays[f"{op}_t"] = np.rint(LOG_SCALE * np.log(a[:, -1] * 1e6)).astype(np.int32)
        meta = dict(self.meta, source=self.source)
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        return atomic_write(Path(path), lambda p: np.savez_compressed(p, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> Tables:
        with np.load(Path(path)) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            rows = []
            for op in OPS:
                if f"{op}_key" not in z:
                    continue
                keys, ts = z[f"{op}_key"], np.exp(z[f"{op}_t"] / LOG_SCALE) * 1e-6
                for k, t in zip(keys.tolist(), ts.tolist()):
                    rows.append((op, _decode(op, k[:-1]), float(k[-1]), t))
        return cls(rows, meta.pop("source", str(path)), meta)


def _encode(op: str, key: tuple) -> tuple:
    if op == "moe":
        return (*key[:-1], DISTRIBUTIONS.index(key[-1]))
    return key


def _decode(op: str, key: list) -> tuple:
    if op == "moe":
        return (*map(float, key[:-1]), DISTRIBUTIONS[int(key[-1])])
    return tuple(map(float, key))


def _bracket(values: np.ndarray, v: float):
    """((grid value, weight), ...) interpolating v in log space between its grid neighbours;
    None outside the grid."""
    v = float(v)
    if not _covers(values, v):
        return None
    i = int(np.searchsorted(values, v))
    if i == len(values) or np.isclose(values[i], v, rtol=REL_TOL, atol=0):
        return ((float(values[min(i, len(values) - 1)]), 1.0),)
    if i > 0 and np.isclose(values[i - 1], v, rtol=REL_TOL, atol=0):
        return ((float(values[i - 1]), 1.0),)
    lo, hi = float(values[i - 1]), float(values[i])
    w = (np.log(v) - np.log(lo)) / (np.log(hi) - np.log(lo))
    return ((lo, 1.0 - w), (hi, w))


def _covers(xs: np.ndarray, x: float) -> bool:
    """x inside [xs[0], xs[-1]], up to rounding (1.9999999 tokens per expert is 2)."""
    return xs[0] * (1 - REL_TOL) <= x <= xs[-1] * (1 + REL_TOL)


def _norm(key: tuple) -> tuple:
    return tuple(k if isinstance(k, str) else float(k) for k in key)


def interp_loglog(x: float, xs: np.ndarray, ts: np.ndarray) -> float:
    """Linear in log(x)–log(t) between the nearest measured neighbours (exact at one)."""
    if len(xs) == 1:
        return float(ts[0])
    return float(np.exp(np.interp(np.log(x), np.log(xs), np.log(ts))))
