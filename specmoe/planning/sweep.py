"""Sweeps: any grid over models, hardware, policy, batch, γ, N, α, lengths and routing.

    specmoe sweep GRID.yaml -o results.parquet        # or .csv; --engine sim; --backend ray

A grid file names its axes; every value is checked before any work starts:

    name: mixtral-vs-qwen
    engine: analytic            # or sim (every policy, slower)
    axes:
      model: [mixtral-8x7b, qwen3-30b-a3b]
      hardware: [h100-pcie, l40s]
      policy: [ondemand, caching, specmoe]
      batch: {start: 1, stop: 256, factor: 2}      # 1, 2, 4, …, 256 (or {start, stop, step})
      gamma: {start: 0, stop: 12, step: 1}
      draft_experts: [1, 2, 4]
      alpha: [0.6, 0.8, paper]                      # a number in [0, 1), paper or measured:NAME
      routing: [uniform, "zipf:1.2"]

Configurations are grouped by everything but (batch, γ, N, α); each group is one analytic call over
the product of those four. A policy ignores the axes it has no use for (ondemand: γ, N, α, …):
it gets one row per remaining combination, with those columns empty. Work is cut into chunks,
each written atomically next to the output (OUT.parts/) and listed in a manifest once done; a
restarted sweep skips the done chunks and ends with the same file as an uninterrupted run.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from specmoe.costs.ops import BREAKDOWN
from specmoe.errors import SpecMoEError, suggest
from specmoe.fileio import atomic_write
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import (
    ANALYTIC,
    PARAMS,
    POLICIES,
    SPECULATIVE,
    check_param,
    make_policy,
)
from specmoe.inputs.policies import DEFAULTS as POLICY_DEFAULTS
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import (
    Acceptance,
    Workload,
    check_routing,
    parse_acceptance,
    parse_routing,
)
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.intervals import evaluate_intervals
from specmoe.predictors.sim import Simulator

ENGINES = ("analytic", "sim")
BACKENDS = ("local", "ray", "serial")
TOP_KEYS = ("name", "engine", "axes", "chunk_size", "sim", "description")
SIM_KEYS = ("iterations", "seed")
INNER = ("batch", "gamma", "draft_experts", "alpha")
# Policy parameters come from the registry (inputs.policies): its defaults, ranges and users.
POLICY_AXES = tuple(k for k in PARAMS if k not in INNER)
GROUP = ("model", "hardware", "policy", "routing", "prompt_len", "output_len", *POLICY_AXES)
AXES = GROUP + INNER
REQUIRED = ("model", "hardware", "policy", "batch")
DEFAULTS: dict[str, tuple] = {
    "routing": ("uniform",), "prompt_len": (512,), "output_len": (256,), "gamma": (5,), "draft_experts": (2,),
    "alpha": ("model",), **{k: (POLICY_DEFAULTS[k],) for k in POLICY_AXES},
}
# Which policies use an axis; for the others it collapses to one empty value (no duplicate rows).
USED_BY: dict[str, tuple[str, ...]] = {"alpha": SPECULATIVE, **{k: p.used_by for k, p in PARAMS.items()}}
DEFAULT_CHUNK = {"analytic": 20_000, "sim": 4}
RESULT_COLUMNS = ("tokens_per_s", "tpot_ms", "ttft_ms", "iteration_ms", "tokens_per_iteration",
                  "h2d_bytes_per_token", "h2d_bytes_per_iteration", "gpu_memory_gb", "fits",
                  "resident_experts_per_layer")
STR_COLUMNS = ("engine", "model", "hardware", "policy", "routing", "acceptance", "draft_set")
INT_COLUMNS = ("batch", "gamma", "draft_experts", "prompt_len", "output_len")
BOOL_COLUMNS = ("fits",)


# ---- grid files ------------------------------------------------------------------------------

def _err(key: str, value: Any, allowed: str) -> SpecMoEError:
    return SpecMoEError(f"grid axes.{key}: value {value!r} {allowed}")


def _expand(key: str, raw: Any) -> list:
    """An axis as a list: a list, a scalar, or {start, stop, step|factor} (stop included)."""
    if isinstance(raw, dict):
        extra = sorted(set(raw) - {"start", "stop", "step", "factor"})
        if extra or not {"start", "stop"} <= set(raw) or ("step" in raw) == ("factor" in raw):
            raise SpecMoEError(f"grid axes.{key}: a range is {{start, stop, step}} or {{start, stop, factor}}; "
                               f"got keys {sorted(raw)}")
        start, stop = raw["start"], raw["stop"]
        if "step" in raw:
            step = raw["step"]
            if not isinstance(step, (int, float)) or step <= 0:
                raise SpecMoEError(f"grid axes.{key}: step={step!r} must be a number > 0")
            n = math.floor((stop - start) / step + 1e-9) + 1
            vals = [start + i * step for i in range(max(n, 0))]
        else:
            factor = raw["factor"]
            if not isinstance(factor, (int, float)) or factor <= 1 or start <= 0:
                raise SpecMoEError(f"grid axes.{key}: factor={factor!r} must be > 1 and start > 0")
            vals, v = [], start
            while v <= stop * (1 + 1e-12):
                vals.append(v)
                v *= factor
        if all(isinstance(v, (int, float)) and float(v).is_integer() for v in vals) and \
                all(isinstance(raw[k], int) for k in ("start", "stop") if k in raw):
            vals = [round(v) for v in vals]
        return vals
    if isinstance(raw, (list, tuple)):
        return list(raw)
    return [raw]


def _whole(key: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
        raise _err(key, v, "must be a whole number")
    if v < lo or (hi is not None and v > hi):
        raise _err(key, v, f"is out of range (allowed {lo}..{hi if hi is not None else '∞'})")
    return int(v)


def _check_value(key: str, v: Any) -> Any:
    """One axis value, checked and normalised (names stay strings; loading happens in _check_names)."""
    if key in ("model", "hardware", "policy", "routing"):
        if not isinstance(v, str) or not v:
            raise _err(key, v, "must be a name (a string)")
        return v.strip().lower() if key == "policy" else v
    if key in ("batch", "prompt_len", "output_len"):
        return _whole(key, v, 1)
    if key in PARAMS:
        return check_param(key, v, "grid axes.")
    if key == "alpha":
        if isinstance(v, str):
            if v not in ("paper", "model") and not v.startswith("measured:"):
                raise _err(key, v, "must be a number in [0, 1), 'model', 'paper' or 'measured:NAME'")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise _err(key, v, "is out of range (allowed [0, 1), 'paper' or 'measured:NAME')")
        return float(v)
    raise AssertionError(key)


@dataclass(frozen=True)
class Chunk:
    id: int
    group: int
    start: int
    stop: int


@dataclass
class Grid:
    """A validated grid: axes (tuples of values), engine, chunk size, simulator options."""

    name: str
    axes: dict[str, tuple]
    engine: str = "analytic"
    chunk_size: int = 0
    sim: dict[str, Any] = field(default_factory=dict)

    def groups(self) -> list[dict[str, Any]]:
        """Group dicts: group-axis values plus the inner axes, collapsed where the policy ignores them."""
        out = []
        for combo in itertools.product(*(self.axes[k] for k in GROUP)):
            g = dict(zip(GROUP, combo))
            if any(g[k] != self.axes[k][0] for k in GROUP if k in USED_BY and g["policy"] not in USED_BY[k]):
                continue    # an ignored axis: keep its first value only, written as empty
            for k in GROUP:
                if k in USED_BY and g["policy"] not in USED_BY[k]:
                    g[k] = None
            for k in INNER:
                used = k not in USED_BY or g["policy"] in USED_BY[k]
                g[k] = tuple(self.axes[k]) if used else (None,)
            out.append(g)
        return out

    def chunks(self) -> tuple[list[dict[str, Any]], list[Chunk]]:
        groups, chunks = self.groups(), []
        for gi, g in enumerate(groups):
            n = group_size(g)
            for start in range(0, n, self.chunk_size):
                chunks.append(Chunk(len(chunks), gi, start, min(start + self.chunk_size, n)))
        return groups, chunks

    @property
    def size(self) -> int:
        return sum(group_size(g) for g in self.groups())

    def fingerprint(self) -> str:
        body = json.dumps({"axes": {k: list(v) for k, v in self.axes.items()}, "engine": self.engine,
                           "chunk_size": self.chunk_size, "sim": self.sim}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def group_size(g: dict) -> int:
    return int(np.prod([len(g[k]) for k in INNER]))


def load_grid(source: str | Path | dict, engine: str | None = None) -> Grid:
    """Read and check a grid (a YAML path or a dict). Every error names the key and the value."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise SpecMoEError(f"grid {path}: no such file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecMoEError(f"grid {path}: not valid YAML ({exc})") from None
        name = path.stem
    else:
        data, name = source, "grid"
    if not isinstance(data, dict):
        raise SpecMoEError("grid: the top level must be a mapping with an 'axes' key")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SpecMoEError(f"grid: unknown key {unknown[0]!r}; allowed {TOP_KEYS}{suggest(unknown[0], TOP_KEYS)}")
    engine = engine or data.get("engine", "analytic")
    if engine not in ENGINES:
        raise SpecMoEError(f"grid engine={engine!r}: allowed {ENGINES}")
    axes_raw = data.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise SpecMoEError("grid axes: missing or empty; give at least " + ", ".join(REQUIRED))
    bad = sorted(set(axes_raw) - set(AXES))
    if bad:
        raise SpecMoEError(f"grid axes: unknown key {bad[0]!r}; allowed {AXES}{suggest(bad[0], AXES)}")
    missing = [k for k in REQUIRED if k not in axes_raw]
    if missing:
        raise SpecMoEError(f"grid axes.{missing[0]}: required (axes {REQUIRED} have no default)")
    axes: dict[str, tuple] = {}
    for key in AXES:
        raw = axes_raw.get(key, list(DEFAULTS.get(key, ())))
        vals = [_check_value(key, v) for v in _expand(key, raw)]
        if not vals:
            raise SpecMoEError(f"grid axes.{key}: empty; give at least one value")
        dup = [v for i, v in enumerate(vals) if v in vals[:i]]
        if dup:
            raise SpecMoEError(f"grid axes.{key}: value {dup[0]!r} appears twice")
        axes[key] = tuple(vals)
    sim = data.get("sim") or {}
    if not isinstance(sim, dict) or set(sim) - set(SIM_KEYS):
        raise SpecMoEError(f"grid sim: allowed keys {SIM_KEYS}; got {sim!r}")
    for k, v in sim.items():
        _whole(f"sim.{k}", v, 0 if k == "seed" else 1)
    chunk = data.get("chunk_size", DEFAULT_CHUNK[engine])
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise SpecMoEError(f"grid chunk_size={chunk!r}: must be a whole number >= 1")
    grid = Grid(name=str(data.get("name", name)), axes=axes, engine=engine, chunk_size=chunk, sim=dict(sim))
    _check_names(grid)
    return grid


def _check_names(grid: Grid) -> None:
    """Load every model, hardware, routing and acceptance once: unknown names fail here, not later."""

    allowed = ANALYTIC if grid.engine == "analytic" else tuple(POLICIES)
    for p in grid.axes["policy"]:
        if p not in allowed:
            hint = " (the simulator covers every policy: engine: sim)" if p in POLICIES else suggest(p, allowed)
            raise _err("policy", p, f"is not available with engine {grid.engine!r}; allowed {allowed}{hint}")
    models = {}
    for m in grid.axes["model"]:
        try:
            models[m] = load_model(m)
        except SpecMoEError as exc:
            raise SpecMoEError(f"grid axes.model: {exc}") from None
    for h in grid.axes["hardware"]:
        try:
            load_system(h)
        except SpecMoEError as exc:
            raise SpecMoEError(f"grid axes.hardware: {exc}") from None
    for r in grid.axes["routing"]:
        try:
            parse_routing(r)
        except SpecMoEError as exc:
            raise SpecMoEError(f"grid axes.routing: {exc}") from None
    for a in grid.axes["alpha"]:
        if isinstance(a, str):
            for ds in grid.axes["draft_set"]:
                try:
                    parse_acceptance(a, ds, model=None if a != "model" else _model(grid.axes["model"][0]))
                except SpecMoEError as exc:
                    raise SpecMoEError(f"grid axes.alpha: {exc}") from None
    n_max = max(grid.axes["draft_experts"])
    for name, spec in models.items():
        if n_max > spec.num_experts:
            raise _err("draft_experts", n_max, f"exceeds the {spec.num_experts} experts per layer of model {name}")
        for c in grid.axes["cutoff_layer"]:
            if c is not None and c > spec.num_layers:
                raise _err("cutoff_layer", c, f"exceeds the {spec.num_layers} layers of model {name}")
    if "specmoe" in grid.axes["policy"] and 0 in grid.axes["draft_experts"] and max(grid.axes["gamma"]) > 0:
        raise _err("draft_experts", 0, "is not allowed with gamma > 0 for specmoe (it drafts with >= 1 resident "
                   "expert per layer)")


# ---- evaluating one chunk ----------------------------------------------------------------------

@lru_cache(maxsize=64)
def _analytic(model: str, hardware: str, routing: str, prompt_len: int, output_len: int):

    spec, rout = load_model(model), parse_routing(routing)
    check_routing(rout, spec.num_experts, spec.name)
    wl = Workload(batch=1, prompt_len=prompt_len, output_len=output_len, routing=rout)
    return Analytic(spec, load_system(hardware), wl)


@lru_cache(maxsize=256)
def _acceptance(raw: str, draft_set: str, model: str):

    return parse_acceptance(raw, draft_set, model=_model(model))


@lru_cache(maxsize=64)
def _model(name: str):
    return load_model(name)


def _policy(g: dict, gamma: int = 0, n: int = 0):

    params = {k: g[k] for k in POLICY_AXES if g[k] is not None}
    return make_policy(g["policy"], gamma=gamma, draft_experts=n, **params)


def _inner_columns(g: dict, start: int, stop: int) -> dict[str, np.ndarray]:
    shape = tuple(len(g[k]) for k in INNER)
    idx = np.unravel_index(np.arange(start, stop), shape)
    cols = {}
    for k, ix in zip(INNER[:3], idx[:3]):
        vals = np.array([0 if v is None else v for v in g[k]], dtype=np.int64)
        cols[k] = vals[ix]
    alpha, label = np.full(stop - start, np.nan), np.full(stop - start, "", dtype=object)
    spread = np.zeros(stop - start)
    draft_set = g["draft_set"] or "hottemporal"
    for j, raw in enumerate(g["alpha"]):
        sel = idx[3] == j
        if raw is None:
            continue
        label[sel] = str(raw)
        if isinstance(raw, str):
            acc = _acceptance(raw, draft_set, g["model"])
            alpha[sel], spread[sel] = acc.alpha_for(cols["draft_experts"][sel]), acc.alpha_spread
        else:
            alpha[sel] = raw
    cols["alpha"], cols["acceptance"], cols["alpha_spread"] = alpha, label, spread
    return cols


def run_chunk(g: dict, start: int, stop: int, engine: str = "analytic", sim: dict | None = None) -> dict[str, np.ndarray]:
    """Evaluate configurations start..stop of group g; returns columns (numpy arrays)."""
    cols = _inner_columns(g, start, stop)
    n = stop - start
    res = _run_analytic(g, cols) if engine == "analytic" else _run_sim(g, cols, sim or {})
    out: dict[str, np.ndarray] = {"engine": np.full(n, engine, dtype=object)}
    for k in GROUP:
        v = g[k]
        if k in POLICY_AXES and PARAMS[k].kind != "choice":
            out[k] = np.full(n, np.nan if v is None else float(v))
        elif k in ("prompt_len", "output_len"):
            out[k] = np.full(n, v, dtype=np.int64)
        else:
            out[k] = np.full(n, "" if v is None else v, dtype=object)
    out.update(cols)
    out.update(res)
    return out


def _run_analytic(g: dict, cols: dict) -> dict[str, np.ndarray]:
    an = _analytic(g["model"], g["hardware"], g["routing"], g["prompt_len"], g["output_len"])
    pol = _policy(g)
    spec = g["policy"] in SPECULATIVE
    alpha = np.where(np.isnan(cols["alpha"]), 0.0, cols["alpha"])
    r = an.evaluate(pol, batch=cols["batch"], gamma=cols["gamma"] if spec else 0,
                    draft_experts=cols["draft_experts"], alpha=alpha)
    fits = np.asarray(r.fits, dtype=bool)
    bcast = lambda a: np.broadcast_to(np.asarray(a, dtype=float), fits.shape)
    nan_unless_fit = lambda a: np.where(fits, bcast(a), np.nan)
    out = {"tokens_per_s": nan_unless_fit(r.tokens_per_s), "tpot_ms": nan_unless_fit(r.tpot_ms),
           "ttft_ms": nan_unless_fit(r.ttft_ms), "iteration_ms": bcast(r.iteration_s) * 1e3,
           "tokens_per_iteration": bcast(r.tokens_per_iteration),
           "h2d_bytes_per_token": bcast(r.h2d_bytes_per_token),
           "h2d_bytes_per_iteration": bcast(r.h2d_bytes_per_iteration),
           "gpu_memory_gb": bcast(r.gpu_memory_bytes) / 1e9, "fits": fits,
           "resident_experts_per_layer": bcast(r.resident_experts_per_layer)}
    for k in BREAKDOWN:
        out[f"t_{k}_ms"] = bcast(r.breakdown.get(k, 0.0)) * 1e3
    iv = evaluate_intervals(an.model, an.system, an.workload, pol, batch=cols["batch"],
                            gamma=cols["gamma"] if spec else 0, draft_experts=cols["draft_experts"],
                            alpha=alpha, alpha_spread=cols["alpha_spread"] if spec else 0.0)
    for k, q in iv.items():
        for j, name in enumerate(("p10", "p50", "p90")):
            out[f"{k}_{name}"] = nan_unless_fit(q[j])
    return out


def _run_sim(g: dict, cols: dict, sim: dict) -> dict[str, np.ndarray]:

    n = len(cols["batch"])
    out = {k: np.full(n, np.nan) for k in RESULT_COLUMNS}
    out.update({f"t_{k}_ms": np.full(n, np.nan) for k in BREAKDOWN})
    out["fits"] = np.zeros(n, dtype=bool)
    spec = g["policy"] in SPECULATIVE
    for i in range(n):
        acc = Acceptance(alpha=float(cols["alpha"][i]), source=cols["acceptance"][i]) if spec else None
        setup = resolve(model=g["model"], hardware=g["hardware"], policy=_policy(g, int(cols["gamma"][i]) if spec else 0,
                                                                                 int(cols["draft_experts"][i])),
                        batch=int(cols["batch"][i]), acceptance=acc, routing=g["routing"],
                        prompt_len=g["prompt_len"], output_len=g["output_len"])
        d = Simulator(setup, iterations=sim.get("iterations", 60), seed=sim.get("seed", 0)).run().to_dict()
        for k in RESULT_COLUMNS:
            v = d.get(k)
            out[k][i] = np.nan if v is None else v
        for k in BREAKDOWN:
            out[f"t_{k}_ms"][i] = d.get("breakdown", {}).get(k, 0.0) * 1e3
    return out


def _run_chunk_task(args: tuple) -> tuple[int, dict[str, np.ndarray]]:
    chunk_id, g, start, stop, engine, sim = args
    return chunk_id, run_chunk(g, start, stop, engine, sim)


# ---- results on disk ---------------------------------------------------------------------------

def _save_npz(path: Path, cols: dict[str, np.ndarray]) -> None:
    arrays = {k: (v.astype(str) if v.dtype == object else v) for k, v in cols.items()}
    atomic_write(path, lambda p: np.savez(p, **arrays))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        cols = {k: z[k] for k in z.files}      # each z[k] reads from disk: once
    return {k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in cols.items()}


RESULT_SUFFIXES = (".csv", ".parquet", ".pq")


def _format(out: Path, what: str = "output") -> str:
    """csv or parquet, from the file name; `what` names the file in errors (output, results)."""
    suffix = out.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SpecMoEError(f"{what} {out}: parquet needs pyarrow (pip install pyarrow) or use a .csv name") from None
        return "parquet"
    hint = ""
    if what == "results" and suffix in (".yaml", ".yml"):
        hint = (f" ({out.name} looks like a grid: run `specmoe sweep {out} -o results.csv`, "
                "then `specmoe report results.csv`)")
    raise SpecMoEError(f"{what} {out}: unknown format {suffix!r}; allowed .csv, .parquet{hint}")


def write_table(table: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write columns to CSV or Parquet (by the name's suffix), atomically."""
    out = Path(out)
    fmt = _format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tbl = pa.table({k: (v.tolist() if v.dtype == object else v) for k, v in table.items()})
        atomic_write(out, lambda p: pq.write_table(tbl, p))
    else:
        atomic_write(out, lambda p: _write_csv(table, p))
    return out


def _write_csv(table: dict[str, np.ndarray], path: Path) -> None:

    keys = list(table)
    cols = [table[k].tolist() for k in keys]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        w.writerows(zip(*cols))


def _column(name: str, values: list[str]) -> np.ndarray:
    if name in STR_COLUMNS:
        return np.array(values, dtype=object)
    if name in BOOL_COLUMNS:
        return np.array([v == "True" for v in values], dtype=bool)
    if name in INT_COLUMNS:
        return np.array(values, dtype=np.int64)
    try:
        return np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return np.array(values, dtype=object)


def load_results(path: str | Path) -> dict[str, np.ndarray]:
    """Read a sweep's CSV or Parquet back into columns (numpy arrays; strings as object arrays)."""
    path = Path(path)
    if not path.is_file():
        raise SpecMoEError(f"results {path}: no such file")
    fmt = _format(path, "results")
    try:
        return _read_parquet(path) if fmt == "parquet" else _read_csv(path)
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        if isinstance(exc, SpecMoEError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SpecMoEError(f"results {path}: not a readable {fmt} file ({first})") from None


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    out = {}
    for name in t.column_names:
        arr = t.column(name).to_numpy(zero_copy_only=False)
        out[name] = arr.astype(object) if arr.dtype.kind in "OU" else arr
    return out


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SpecMoEError(f"results {path}: empty file")
    head, body = rows[0], rows[1:]
    if any(len(r) != len(head) for r in body):
        raise SpecMoEError(f"results {path}: rows of unequal length (not a sweep's CSV)")
    return {k: _column(k, [r[i] for r in body]) for i, k in enumerate(head)}


def concat(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = list(parts)
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---- running -----------------------------------------------------------------------------------

class Manifest:
    """OUT.parts/manifest.json: the grid's fingerprint and the ids of chunks saved so far."""

    def __init__(self, parts: Path, fingerprint: str, total: int, fresh: bool):
        self.parts, self.path = parts, parts / "manifest.json"
        if fresh and parts.exists():
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        for tmp in parts.glob(".tmp-*"):
            tmp.unlink()      # a write cut off by a kill
        self.done: set[int] = set()
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("fingerprint") != fingerprint or data.get("chunks") != total:
                raise SpecMoEError(f"{parts} holds chunks of a different grid (fingerprint "
                                   f"{data.get('fingerprint')} vs {fingerprint}); use --fresh to start over")
            self.done = {i for i in data.get("done", []) if self.chunk_path(i).exists()}
        self.fingerprint, self.total = fingerprint, total
        self._write()

    def chunk_path(self, i: int) -> Path:
        return self.parts / f"chunk-{i:06d}.npz"

    def add(self, i: int, cols: dict[str, np.ndarray]) -> None:
        _save_npz(self.chunk_path(i), cols)     # the chunk first, then the manifest that lists it
        self.done.add(i)
        self._write()

    def _write(self) -> None:
        body = json.dumps({"schema": "specmoe.planning.sweep/1", "fingerprint": self.fingerprint, "chunks": self.total,
                           "done": sorted(self.done)})
        atomic_write(self.path, lambda p: p.write_text(body))


def _tasks(grid: Grid, groups, chunks) -> list[tuple]:
    return [(c.id, groups[c.group], c.start, c.stop, grid.engine, grid.sim) for c in chunks]


def _execute(tasks: list[tuple], backend: str, jobs: int, ray_address: str | None):
    """Yield (chunk id, columns) as chunks finish, on the chosen backend."""
    if backend == "serial" or jobs == 1 or len(tasks) <= 1:
        for t in tasks:
            yield _run_chunk_task(t)
        return
    if backend == "ray":
        yield from _execute_ray(tasks, ray_address)
        return

    # spawn, not fork: the progress bar runs a thread, and forking a threaded process can deadlock.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_chunk_task, t) for t in tasks]
        try:
            for f in as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def _execute_ray(tasks: list[tuple], address: str | None):
    try:
        import ray
    except ImportError:
        raise SpecMoEError("--backend ray needs ray (pip install 'specmoe[ray]')") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    remote = ray.remote(_run_chunk_task)
    pending = [remote.remote(t) for t in tasks]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref)


def run_sweep(grid: Grid | str | Path | dict, out: str | Path | None = None, jobs: int | None = None,
              backend: str = "local", engine: str | None = None, progress: bool = True, fresh: bool = False,
              on_chunk: Callable[[int, int, int], None] | None = None, ray_address: str | None = None,
              console=None) -> dict[str, np.ndarray]:
    """Run a grid; return its columns and, with `out`, write them (resumable: see the module doc).

    on_chunk(chunk_id, chunks_done, chunks_total) is called after each chunk is saved (tests use it
    to interrupt a run). jobs: worker processes (default: CPU count); backend: local|ray|serial.
    """
    if backend not in BACKENDS:
        raise SpecMoEError(f"backend={backend!r}: allowed {BACKENDS}")
    grid = grid if isinstance(grid, Grid) else load_grid(grid, engine)
    if engine and engine != grid.engine:
        raise SpecMoEError(f"engine={engine!r} differs from the loaded grid's {grid.engine!r}: pass the grid as a path")
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise SpecMoEError(f"jobs={jobs}: must be >= 1")
    out = Path(out) if out is not None else None
    if out is not None:
        _format(out)
    groups, chunks = grid.chunks()
    manifest = Manifest(Path(f"{out}.parts"), grid.fingerprint(), len(chunks), fresh) if out else None
    done = manifest.done if manifest else set()
    results: dict[int, dict[str, np.ndarray]] = {}
    todo = [c for c in chunks if c.id not in done]
    total = sum(c.stop - c.start for c in chunks)
    with _progress(progress, console) as bar:
        task = bar.add_task(f"{grid.name} ({grid.engine}, {len(chunks)} chunks)", total=total,
                            completed=sum(c.stop - c.start for c in chunks if c.id in done))
        for cid, cols in _execute(_tasks(grid, groups, todo), backend, jobs, ray_address):
            if manifest:
                manifest.add(cid, cols)
            else:
                results[cid] = cols
            bar.advance(task, chunks[cid].stop - chunks[cid].start)
            if on_chunk:
                on_chunk(cid, len(manifest.done) if manifest else len(results), len(chunks))
    if manifest:
        table = concat(_load_npz(manifest.chunk_path(c.id)) for c in chunks)
        write_table(table, out)
        shutil.rmtree(manifest.parts)
        return table
    return concat(results[c.id] for c in chunks)


def _progress(enabled: bool, console=None):

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("configs"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, console=console,
                    transient=False)
