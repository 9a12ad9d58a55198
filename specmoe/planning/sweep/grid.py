"""Sweep grids: the axes a grid file may name, their defaults, and checking every value."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from specmoe.errors import SpecMoEError, suggest
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import (
    ANALYTIC,
    PARAMS,
    POLICIES,
    SPECULATIVE,
    check_param,
)
from specmoe.inputs.policies import DEFAULTS as POLICY_DEFAULTS
from specmoe.inputs.workload import (
    parse_acceptance,
    parse_routing,
)

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
    "routing": ("uniform",),
    "prompt_len": (512,),
    "output_len": (256,),
    "gamma": (5,),
    "draft_experts": (2,),
    "alpha": ("model",),
    **{k: (POLICY_DEFAULTS[k],) for k in POLICY_AXES},
}
# Which policies use an axis; for the others it collapses to one empty value (no duplicate rows).
USED_BY: dict[str, tuple[str, ...]] = {
    "alpha": SPECULATIVE,
    **{k: p.used_by for k, p in PARAMS.items()},
}
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
            raise SpecMoEError(
                f"grid axes.{key}: a range is {{start, stop, step}} or {{start, stop, factor}}; "
                f"got keys {sorted(raw)}"
            )
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
    """One axis value, checked and normalised (names stay strings; loading happens in
    _check_names)."""
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
                raise _err(
                    key, v, "must be a number in [0, 1), 'model', 'paper' or 'measured:NAME'"
                )
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
        """Group dicts: group-axis values plus the inner axes, collapsed where the policy ignores
        them."""
        out = []
        for combo in itertools.product(*(self.axes[k] for k in GROUP)):
            g = dict(zip(GROUP, combo))
            if any(
                g[k] != self.axes[k][0]
                for k in GROUP
                if k in USED_BY and g["policy"] not in USED_BY[k]
            ):
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
        body = json.dumps(
            {
                "axes": {k: list(v) for k, v in self.axes.items()},
                "engine": self.engine,
                "chunk_size": self.chunk_size,
                "sim": self.sim,
            },
            sort_keys=True,
            default=str,
        )
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
        raise SpecMoEError(
            f"grid: unknown key {unknown[0]!r}; allowed {TOP_KEYS}{suggest(unknown[0], TOP_KEYS)}"
        )
    engine = engine or data.get("engine", "analytic")
    if engine not in ENGINES:
        raise SpecMoEError(f"grid engine={engine!r}: allowed {ENGINES}")
    axes_raw = data.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise SpecMoEError("grid axes: missing or empty; give at least " + ", ".join(REQUIRED))
    bad = sorted(set(axes_raw) - set(AXES))
    if bad:
        raise SpecMoEError(
            f"grid axes: unknown key {bad[0]!r}; allowed {AXES}{suggest(bad[0], AXES)}"
        )
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
    grid = Grid(
        name=str(data.get("name", name)), axes=axes, engine=engine, chunk_size=chunk, sim=dict(sim)
    )
    _check_names(grid)
    return grid


def _check_names(grid: Grid) -> None:
    """Load every model, hardware, routing and acceptance once: unknown names fail here, not
    later."""

    allowed = ANALYTIC if grid.engine == "analytic" else tuple(POLICIES)
    for p in grid.axes["policy"]:
        if p not in allowed:
            hint = (
                " (the simulator covers every policy: engine: sim)"
                if p in POLICIES
                else suggest(p, allowed)
            )
            raise _err(
                "policy",
                p,
                f"is not available with engine {grid.engine!r}; allowed {allowed}{hint}",
            )
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
                    parse_acceptance(
                        a, ds, model=None if a != "model" else load_model(grid.axes["model"][0])
                    )
                except SpecMoEError as exc:
                    raise SpecMoEError(f"grid axes.alpha: {exc}") from None
    n_max = max(grid.axes["draft_experts"])
    for name, spec in models.items():
        if n_max > spec.num_experts:
            raise _err(
                "draft_experts",
                n_max,
                f"exceeds the {spec.num_experts} experts per layer of model {name}",
            )
        for c in grid.axes["cutoff_layer"]:
            if c is not None and c > spec.num_layers:
                raise _err(
                    "cutoff_layer", c, f"exceeds the {spec.num_layers} layers of model {name}"
                )
    if (
        "specmoe" in grid.axes["policy"]
        and 0 in grid.axes["draft_experts"]
        and max(grid.axes["gamma"]) > 0
    ):
        raise _err(
            "draft_experts",
            0,
            "is not allowed with gamma > 0 for specmoe (it drafts with >= 1 resident "
            "expert per layer)",
        )
