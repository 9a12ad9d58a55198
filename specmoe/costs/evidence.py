"""The best evidence for each cost parameter of a system: median, spread and source.

Defaults are never the ideal roofline (DESIGN.md §5). For each CostParams field, later rules win:
1. the ideal value (η = 1, no overhead) — only where nothing below says more;
2. GPU: its calibrated profile (hwprofiles/calibrated/<gpu>-<backend>.yaml, GPU parameters only),
   else one of the nearest architecture's, carried over with a wider spread (CARRY_OVER_SPREADS),
   else the GPU's own `efficiency_prior`, else the stated GPU prior (hwprofiles/priors/gpu.yaml);
3. host and link: their `efficiency_prior` blocks (published measurements, or stated priors);
4. the system's own `efficiency_prior` and `efficiency` (a calibrated fit: its values, with the
   spreads its `efficiency_prior` gives, else CALIBRATED_SPREAD).
`System.ideal` (CLI `--ideal`) skips all of it: the datasheet upper bound, spread 0.

Measured tables (`tables_for`): where hwprofiles/tables/ holds measured kernel latencies of the
system's own GPU, or else of a GPU with the same die (DIES), predictions interpolate them inside
their range and use these parameters outside it (specmoe.costs.tables, CostModel._hybrid); a
same-die GPU's latency is scaled by the cost model's ratio between the two GPUs. Tables are never
carried to another die.

`model_error` (a prior key, not a cost parameter): the end-to-end error the parameters do not
explain, as a multiplicative spread on the whole iteration time (a calibration's hold-out error of
its iteration stage); 0 where none was measured.

A spread is the standard deviation of log(parameter): the parameter's p10/p90 are
value·exp(∓1.2816·spread). specmoe.predictors.intervals turns spreads into prediction intervals.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from specmoe.costs.tables import Tables
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import Prior, System, load_gpu

# The GPU-kernel op classes of issue 13 (grouped MoE, decode and prefill attention) and the
# kernel geometry their fits assumed (tiles, MoE block: fixed, never drawn with a spread).
# l2_bw_factor describes single-op benchmark replays: a forward pass never reads at it, but the
# measured tables were replays, and it turns their latencies into forward-pass ones.
GEOMETRY_PARAMS = ("tile_m", "tile_n", "moe_block_tokens", "gemm_tiles")
GPU_PARAMS = ("gemm_compute_eff", "gemm_half_tokens", "hbm_eff", "attn_eff", "kernel_overhead_us",
              "expert_overhead_us", "layer_overhead_us", "moe_compute_eff", "moe_half_tokens",
              "moe_hbm_eff", "moe_kernel_us", "moe_reread", "attn_fixed_us", "attn_item_us",
              "prefill_compute_eff", "prefill_half_head_dim", "prefill_item_us",
              "prefill_fixed_us", "gemm_tile_half", "split_k_us", "sm_bw_share", "l2_bw_factor",
              *GEOMETRY_PARAMS)
# parameters whose spread is not drawn: geometry is fixed, and l2_bw_factor only converts a
# replayed table's latency (the table's own error is not a parameter spread)
UNDRAWN_PARAMS = (*GEOMETRY_PARAMS, "l2_bw_factor")
# A carried-over profile adds, in quadrature, the extra σ of log error of fitting on other GPUs
# over fitting on the GPU's own rows, at p90, per op class (experiments/carry_over.py over
# experiments/reports/crossgpu.json: the larger of leave-one-GPU-out and the same die alone); a
# parameter takes the largest of its op classes' (HOLDOUT_CLASSES), others the largest of all.
CARRY_OVER_SPREADS = {"attn_prefill": 0.07, "attn_scores": 0.11, "gemm": 0.12, "moe": 0.06}
# The spread of a measured table's interpolated latency (the table_scale parameter): its
# leave-one-out interpolation error at p90, as σ of log error, the largest op class's median
# over GPU × backend (experiments/carry_over.py over crossgpu.json column f: 0.07-0.09).
TABLE_SPREAD = 0.09
# A same-die GPU's table scaled by the cost model's ratio (DIES) adds this σ of log error, in
# quadrature: the p90 error of predicting a GPU's rows from its same-die partner's tables,
# the largest op class's median over pairs x backends (experiments/table_transfer.py).
TRANSFER_SPREAD = 0.09
# A calibrated profile whose fit did not record a spread: stated assumption, not a measurement.
CALIBRATED_SPREAD = 0.10
# A calibration's hold-out error per op class (calibration.holdout.mape, written by
# specmoe.fit.calibrate) sets the spread of the parameters that class's time depends on; the
# `iteration` stage's error is the end-to-end model error. MAPE ≈ 0.8σ for a normal error.
HOLDOUT_CLASSES = {
    "expert": ("gemm_compute_eff", "gemm_half_tokens", "expert_overhead_us", "hbm_eff"),
    "attn": ("attn_eff", "kernel_overhead_us"),
    "attn_scores": ("attn_eff", "attn_fixed_us", "attn_item_us"),
    # GPU kernel tables (issue 13: calibrated/<gpu>-<backend>.yaml)
    "gemm": ("gemm_compute_eff", "gemm_half_tokens", "hbm_eff", "kernel_overhead_us",
             "gemm_tile_half", "split_k_us", "sm_bw_share"),
    "moe": ("moe_compute_eff", "moe_half_tokens", "moe_hbm_eff", "moe_kernel_us", "moe_reread"),
    "attn_prefill": ("prefill_compute_eff", "prefill_half_head_dim", "prefill_item_us",
                     "prefill_fixed_us"),
    "h2d": ("link_eff", "transfer_setup_us", "pageable_eff"),
    "iteration": ("layer_overhead_us", "model_error"),
}
MAPE_TO_SIGMA = 1.25
BACKEND_ORDER = ("vllm", "sglang", "trtllm")
# Architecture families for carrying a calibrated profile over to a GPU without one.
ARCHITECTURES = {
    "hopper": ("h100-sxm", "h100-pcie", "h100-nvl", "h100-96gb", "h200-sxm"),
    "blackwell": ("b200", "b300", "gb200", "gb300"),
    "ampere": ("a100-sxm-80gb", "a100-pcie-40gb", "a30"),
    "ada": ("l40s", "l4", "rtx-4090"),
    "blackwell-rtx": ("rtx-pro-6000",),      # GB202 (SM 12.0): not the B200's tensor cores
    "turing": ("t4",),
}
# The same silicon sold as other products (other clocks, enabled SMs, memory): a GPU without
# measured tables borrows the first of its die's that has them, scaled by the cost model's ratio
# between the two GPUs. GB200 and GB300 carry B200 and B300 GPUs. Measured on the same-die pairs
# the tables cover (experiments/table_transfer.py), which differ in memory and clocks, not SMs.
DIES = {
    "GH100": ("h100-sxm", "h200-sxm", "h100-pcie", "h100-nvl", "h100-96gb"),
    "GA100": ("a100-sxm-80gb", "a100-pcie-40gb", "a30"),
    "B200 (Blackwell)": ("b200", "gb200"),
    "B300 (Blackwell Ultra)": ("b300", "gb300"),
    "AD102": ("l40s", "rtx-4090"),
}


@dataclass(frozen=True)
class Evidence:
    """Per-parameter medians (overrides of the ideal CostParams), spreads and sources."""

    values: dict[str, float] = field(default_factory=dict)
    spreads: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    gpu: str = "ideal"          # where the GPU parameters came from, in words
    calibrated: bool = False    # a fitted profile (this system's, or its GPU's) is in use
    model_error: float = 0.0    # σ of log(iteration time) not explained by the parameters
    model_error_source: str = ""

    def summary(self) -> dict:
        return {"gpu": self.gpu, "calibrated": self.calibrated,
                "parameters": {k: {"value": self.values[k], "spread": self.spreads.get(k, 0.0),
                                   "source": self.sources.get(k, "")} for k in sorted(self.values)}}


def _profiles_dir() -> Path:
    return Path(str(resources.files("specmoe.hwprofiles")))


@cache
def _calibrated_gpus() -> dict[str, list[tuple[str, Path]]]:
    """GPU name -> [(profile stem, path)] of calibrated profiles, preferred backend first."""
    out: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted((_profiles_dir() / "calibrated").glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        gpu = data.get("gpu")
        name = gpu.get("name") if isinstance(gpu, dict) else gpu
        if isinstance(name, str) and data.get("efficiency"):
            out.setdefault(name, []).append((path.stem, path))

    def rank(item):
        stem = item[0]
        matches = (i for i, b in enumerate(BACKEND_ORDER) if stem.endswith(b))
        return next(matches, len(BACKEND_ORDER))

    return {k: sorted(v, key=rank) for k, v in out.items()}


@cache
def _gpu_prior() -> dict[str, Prior]:
    data = yaml.safe_load((_profiles_dir() / "priors" / "gpu.yaml").read_text())
    return {k: Prior.model_validate(v) for k, v in data.items()}


def _architecture(gpu_name: str) -> str | None:
    return next((a for a, names in ARCHITECTURES.items() if gpu_name in names), None)


def carry_over_spread(param: str) -> float:
    """The σ a carried-over profile adds to `param`: its op classes' largest (CARRY_OVER_SPREADS),
    or the largest of all for a parameter of no measured class."""
    own = [CARRY_OVER_SPREADS[c] for c, ps in HOLDOUT_CLASSES.items()
           if param in ps and c in CARRY_OVER_SPREADS]
    return max(own or CARRY_OVER_SPREADS.values())


def _die(gpu_name: str) -> str | None:
    return next((d for d, names in DIES.items() if gpu_name in names), None)


def _die_mates(gpu_name: str) -> tuple[str, ...]:
    """The GPUs of `gpu_name`'s die (itself included), or none."""
    return DIES.get(_die(gpu_name) or "", ())


def _kin(gpu_name: str) -> list[str]:
    """GPUs with a calibrated profile this GPU may borrow: its die's first (the GPU whose
    tables it also borrows, tables_for), then its architecture's."""
    die = _die_mates(gpu_name)
    arch = ARCHITECTURES.get(_architecture(gpu_name) or "", ())
    return [g for g in dict.fromkeys((*die, *arch)) if g in _calibrated_gpus()]


_MODEL_ERRORS: dict[Path, tuple[float, str]] = {}


def holdout_spreads(calibration: dict | None, where: str) -> dict[str, tuple[float, str]]:
    """{param or 'model_error': (spread, source)} from a calibration's per-op-class
    hold-out MAPE."""
    mape = ((calibration or {}).get("holdout") or {}).get("mape") or {}
    out: dict[str, tuple[float, str]] = {}
    for cls, params in HOLDOUT_CLASSES.items():
        m = (mape.get(cls) or {}).get("mape")
        if not isinstance(m, (int, float)):
            continue
        for p in params:
            spread = MAPE_TO_SIGMA * float(m)
            if spread > out.get(p, (0.0, ""))[0]:
                out[p] = (spread, f"{where}: {MAPE_TO_SIGMA} x the {cls} op class hold-out MAPE "
                                  f"{100 * m:.1f}% (calibration.holdout)")
    return out


def _fitted_gpu_part(path: Path) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """GPU parameters of a calibrated profile: values, spreads (its priors, else the default).
    Read once per file version: every prediction asks (the planner asks per candidate)."""
    vals, spreads, srcs = _fitted_gpu_part_cached(str(path), path.stat().st_mtime_ns)
    return dict(vals), dict(spreads), dict(srcs)


@functools.lru_cache(maxsize=64)
def _fitted_gpu_part_cached(name: str, _mtime_ns: int):
    path = Path(name)
    data = yaml.safe_load(path.read_text())
    eff = {
        k: float(v)
        for k, v in (data.get("efficiency") or {}).items()
        if k in GPU_PARAMS and v is not None
    }
    priors = data.get("efficiency_prior") or {}
    held = holdout_spreads(data.get("calibration"), f"calibrated: {path.name}")
    if MODEL_ERROR in priors:
        eff_err = Prior.model_validate(priors[MODEL_ERROR])
        _MODEL_ERRORS[path] = (eff_err.spread, f"calibrated: {path.name}: {eff_err.source}")
    elif MODEL_ERROR in held:
        _MODEL_ERRORS[path] = held[MODEL_ERROR]
    spreads = {k: 0.0 if k in UNDRAWN_PARAMS else
               float((priors.get(k) or {}).get("spread", held.get(k, (CALIBRATED_SPREAD,))[0]))
               for k in eff}
    return eff, spreads, {k: held.get(k, (0, f"calibrated: {path.name}"))[1] for k in eff}


MODEL_ERROR = "model_error"


def _apply(ev: dict, priors: dict[str, Prior] | None, what: str) -> None:
    for k, p in (priors or {}).items():
        if k == MODEL_ERROR:
            ev["model_error"], ev["model_error_source"] = p.spread, f"{what}: {p.source}"
            continue
        ev["values"][k], ev["spreads"][k], ev["sources"][k] = (
            p.value,
            p.spread,
            f"{what}: {p.source}",
        )


def _gpu_evidence(system: System, ev: dict) -> None:
    name = system.gpu.name
    own = _calibrated_gpus().get(name)
    if own:
        vals, spreads, srcs = _fitted_gpu_part(own[0][1])
        ev["gpu"], ev["calibrated"] = f"calibrated ({own[0][0]})", True
    else:
        kin = _kin(name)
        if kin:
            stem, path = _calibrated_gpus()[kin[0]][0]
            arch = f"same {_die(name)} die" if kin[0] in _die_mates(name) else _architecture(name)
            vals, spreads, srcs = _fitted_gpu_part(path)
            spreads = {k: s if k in UNDRAWN_PARAMS else math.hypot(s, carry_over_spread(k))
                       for k, s in spreads.items()}
            srcs = {k: f"carried over from {stem} ({arch}), spread widened by the "
                       f"leave-one-GPU-out error {carry_over_spread(k):.0%}" for k in vals}
            ev["gpu"], ev["calibrated"] = f"carried over from {stem} ({arch})", True
        else:
            priors = system.gpu.efficiency_prior or _gpu_prior()
            _apply(ev, priors, "GPU prior")
            ev["gpu"] = "prior (no calibrated profile for this GPU or its architecture)"
            return
    ev["values"].update(vals)
    ev["spreads"].update(spreads)
    ev["sources"].update(srcs)
    path = (own or _calibrated_gpus()[kin[0]])[0][1]
    if path in _MODEL_ERRORS:
        ev["model_error"], ev["model_error_source"] = _MODEL_ERRORS[path]


def evidence_for(system: System) -> Evidence:
    """The evidence behind every cost parameter of `system` (see the module docstring)."""
    if system.ideal:
        return Evidence(gpu="ideal (datasheet roofline, --ideal)")
    ev: dict = {"values": {}, "spreads": {}, "sources": {}, "gpu": "", "calibrated": False,
                "model_error": 0.0, "model_error_source": ""}
    fitted = {k: v for k, v in (system.efficiency or {}).items() if v is not None}
    if system.calibration is None or not any(k in GPU_PARAMS for k in fitted):
        _gpu_evidence(system, ev)
    else:
        ev["gpu"] = f"calibrated ({system.name})"
    _apply(ev, system.host.efficiency_prior, f"host {system.host.name}")
    _apply(ev, system.link.efficiency_prior, f"link {system.link.name}")
    _apply(ev, system.efficiency_prior, f"system {system.name}")
    held = holdout_spreads(system.calibration, f"calibrated: {system.name}")
    if MODEL_ERROR in held and not (system.efficiency_prior or {}).get(MODEL_ERROR):
        ev["model_error"], ev["model_error_source"] = held[MODEL_ERROR]
    for k, v in fitted.items():
        ev["values"][k] = float(v)
        own = (system.efficiency_prior or {}).get(k)
        if own is not None:
            ev["spreads"][k] = own.spread
        elif system.calibration is not None:
            ev["spreads"][k], ev["sources"][k] = held.get(
                k, (CALIBRATED_SPREAD, f"calibrated: {system.name}")
            )
        else:
            ev["spreads"][k], ev["sources"][k] = 0.0, f"efficiency block of {system.name}"
        if system.calibration is not None:
            ev["calibrated"] = True
    tables = tables_for(system)
    if tables is not None:
        ev["values"]["table_scale"] = 1.0
        ev["spreads"]["table_scale"], ev["sources"]["table_scale"] = _table_spread(tables, system)
    for k, v in ev["values"].items():
        if v < 0:
            raise SpecMoEError(f"hardware {system.name}: {k}={v} must be >= 0 ({ev['sources'][k]})")
    return Evidence(ev["values"], ev["spreads"], ev["sources"], ev["gpu"], ev["calibrated"],
                    ev["model_error"], ev["model_error_source"])


def _table_spread(tables: Tables, system: System) -> tuple[float, str]:
    source = ("measured kernel tables: leave-one-out interpolation error at p90 "
              "(experiments/carry_over.py)")
    gpu = table_gpu(tables, system)
    if gpu == system.gpu.name:
        return TABLE_SPREAD, source
    return (math.hypot(TABLE_SPREAD, TRANSFER_SPREAD),
            f"{source}, and carried from {gpu} (same die): the p90 error of predicting a GPU "
            "from its same-die partner's tables (experiments/table_transfer.py)")


# ---------------------------------------------------------------------------- measured tables

@cache
def _shipped_tables() -> dict[str, list[Path]]:
    """GPU profile name -> its table extracts (hwprofiles/tables/<gpu>-<backend>.npz), preferred
    backend first."""
    out: dict[str, list[Path]] = {}
    for path in sorted((_profiles_dir() / "tables").glob("*.npz")):
        gpu, _, backend = path.stem.rpartition("-")
        if backend in BACKEND_ORDER:
            out.setdefault(gpu, []).append(path)
    return {g: sorted(v, key=lambda p: BACKEND_ORDER.index(p.stem.rpartition("-")[2]))
            for g, v in out.items()}


@functools.lru_cache(maxsize=16)
def _load_tables(name: str, _mtime_ns: int) -> Tables:
    return Tables.load(name)


def tables_for(system: System) -> Tables | None:
    """The measured kernel tables predictions for `system` interpolate, or None: its GPU's own,
    else those of a GPU with the same die (DIES; the cost model scales them by its ratio between
    the two GPUs), else none. None also for `--ideal`, `measured_tables: false`, or a system
    calibrated on its own engine's traces (its fit describes its own kernels, which the tables
    do not)."""
    if system.ideal or not system.measured_tables or _own_engine_fit(system):
        return None
    shipped = _shipped_tables()
    gpu = system.gpu.name
    source = gpu if gpu in shipped else next((g for g in _die_mates(gpu) if g in shipped), None)
    if source is None:
        return None
    path = shipped[source][0]
    return _load_tables(str(path), path.stat().st_mtime_ns)


def table_gpu(tables: Tables, system: System) -> str:
    """The GPU profile a table was measured on (the system's own unless its meta says other)."""
    return str(tables.meta.get("gpu", system.gpu.name))


def measured_system(system: System, gpu: str) -> System:
    """`system` with the GPU a table was measured on in place of its own."""
    if gpu == system.gpu.name:
        return system
    return system.model_copy(update={"gpu": _gpu_profile(gpu)})


@functools.lru_cache(maxsize=16)
def _gpu_profile(name: str):
    return load_gpu(name)


def _own_engine_fit(system: System) -> bool:
    cal = system.calibration or {}
    traces = cal.get("traces") or []
    fitted_gpu = any(k in GPU_PARAMS for k in (system.efficiency or {}))
    return bool(cal) and fitted_gpu and not all(
        isinstance(t, dict) and t.get("kind") == "public measured tables" for t in traces)


def tables_summary(tables: Tables | None, system: System | None = None) -> str:
    """One line: which measured tables a prediction used, or that it used none."""
    if tables is None:
        return "none (the fitted cost model answers every op)"
    m = tables.meta
    carried = "" if system is None or table_gpu(tables, system) == system.gpu.name else (
        f", carried to {system.gpu.name} (same die) by the cost model's ratio between the GPUs")
    return (f"{m.get('device', '?')}: {m.get('backend', '?')} {m.get('backend_version', '?')} "
            f"kernels, {tables.rows():,} measured points ({m.get('package', '?')} "
            f"{m.get('package_version', '?')}, {m.get('license', '?')}){carried}")
