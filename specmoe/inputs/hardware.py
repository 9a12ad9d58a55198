"""Hardware profiles: a GPU, a host and a host-GPU link, composed into a System, read from YAML.

Units are in the field names: GB = 1e9 bytes, GB/s = 1e9 B/s, TFLOP/s = 1e12 FLOP/s, us = 1e-6 s.
Every number carries a source (datasheet, paper or measurement) so that a prediction can be traced
back to where its inputs came from; a validator refuses a profile with an unsourced number.

Shipped profiles live in the package `specmoe.hwprofiles` (hwprofiles/ in the repository):
gpus/, hosts/, links/, systems/ and calibrated/ (fitted profiles written by calibration).
"""

from __future__ import annotations

import os
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from specmoe.errors import SpecMoEError, suggest
from specmoe.fileio import atomic_write_text

__all__ = [
    "GPU",
    "Host",
    "Interconnect",
    "Link",
    "Prior",
    "System",
    "as_ideal",
    "list_hardware",
    "load_gpu",
    "load_host",
    "load_interconnect",
    "load_link",
    "load_system",
    "save_system",
    "system_to_dict",
]

Pos = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(gt=0)]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
# Free-text keys allowed in `sources` beside field names (SKU, clock and configuration assumptions).
_SOURCE_NOTE_KEYS = {"sku", "notes"}


def _numeric_fields(model: type[BaseModel]) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        args = typing.get_args(info.annotation) or (info.annotation,)
        if any(a in (int, float) for a in args):
            out.append(name)
    return out


class _Part(BaseModel):
    """Common rules of GPU/Host/Link: strict keys, positive finite numbers, a source for each."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("name", check_fields=False)
    @classmethod
    def _name_format(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits, dots and dashes, e.g. 'h100-pcie'")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        # YAML `yes`/`true` would otherwise pass as the number 1.
        if isinstance(data, dict):
            for f in _numeric_fields(cls):
                if isinstance(data.get(f), bool):
                    # pydantic turns ValueError (not TypeError) into a validation error
                    msg = f"{f} = {data[f]!r}: must be a number, not a boolean"
                    raise ValueError(msg)  # noqa: TRY004
        return data

    @model_validator(mode="after")
    def _every_number_has_a_source(self):
        numeric = [f for f in _numeric_fields(type(self)) if getattr(self, f) is not None]
        missing = [f for f in numeric if not str(self.sources.get(f, "")).strip()]
        if missing:
            raise ValueError(
                f"missing source for {', '.join(missing)}: add sources.{missing[0]} naming the "
                "datasheet, paper or measurement the number comes from")
        allowed = set(type(self).model_fields) | _SOURCE_NOTE_KEYS
        unknown = sorted(set(self.sources) - allowed)
        if unknown:
            raise ValueError(
                f"sources has unknown key {unknown[0]!r}{suggest(unknown[0], allowed)}; "
                f"allowed: field names, {', '.join(sorted(_SOURCE_NOTE_KEYS))}")
        return self


class Prior(BaseModel):
    """A cost parameter known only to within a spread: its median, the standard deviation of its
    logarithm (≈ the relative 1σ error; 0 = exact) and where both come from."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    value: float = Field(ge=0)
    spread: float = Field(ge=0, le=3)
    source: str = Field(min_length=3)


# Efficiency priors: {cost parameter name (specmoe.costs.ops.CostParams): Prior}; keys are checked
# by specmoe.costs.evidence, which combines the priors of a system's parts.
Priors = dict[str, Prior]


class GPU(_Part):
    name: str
    vendor: str
    hbm_gb: Pos                       # capacity, GB = 1e9 bytes
    hbm_bw_gbps: Pos                  # peak HBM bandwidth, GB/s
    bf16_tflops: Pos                  # dense (no sparsity) peak
    fp16_tflops: Pos
    fp8_tflops: Pos | None = None
    fp32_tflops: Pos                  # non-tensor FP32
    sm_count: PosInt
    l2_mb: Pos
    copy_engines: PosInt              # async copy engines usable for H2D/D2H
    pcie_gen: PosInt
    pcie_lanes: PosInt
    nvlink_gbps: Pos | None = None    # per-direction aggregate
    tdp_w: Pos
    default_host: str                 # name of a host profile
    default_link: str                 # name of a link profile
    sources: dict[str, str]
    efficiency_prior: Priors | None = None


class Host(_Part):
    name: str
    dram_gb: Pos
    dram_bw_gbps: Pos                 # aggregate peak across channels and sockets
    cpu_cores: PosInt
    cpu_fp32_tflops: Pos              # cores x GHz x FLOP/cycle, derivation in the source
    cpu_bf16_tflops: Pos              # AMX / AVX512-BF16 peak where present, else = fp32
    ssd_read_gbps: Pos
    sources: dict[str, str]
    efficiency_prior: Priors | None = None    # published measurements of achievable fractions


class Link(_Part):
    name: str
    h2d_gbps: Pos                     # theoretical per-direction payload bandwidth
    d2h_gbps: Pos
    setup_us: Pos                     # per-transfer fixed latency
    sources: dict[str, str]
    efficiency_prior: Priors | None = None    # measured fraction of h2d/d2h_gbps, with spread


INTERCONNECT_KINDS = ("nvlink", "pcie", "network")


class Interconnect(_Part):
    """GPU-to-GPU path used by collectives: per-GPU, per-direction payload bandwidth."""

    name: str
    kind: str                         # nvlink | pcie | network
    bw_gbps: Pos                      # per GPU, per direction, GB/s
    latency_us: Pos                   # fixed time per collective (launch + first byte)
    sources: dict[str, str]

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in INTERCONNECT_KINDS:
            raise ValueError(f"must be one of {', '.join(INTERCONNECT_KINDS)}")
        return v


class System(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    gpu: GPU
    host: Host
    link: Link
    gpu_count: PosInt = 1             # GPUs in the whole system (all nodes)
    nodes: PosInt = 1
    interconnect: Interconnect | None = None   # between GPUs of one node
    network: Interconnect | None = None        # between nodes (one NIC per GPU)
    efficiency: dict[str, float] = Field(default_factory=dict)  # keys checked by specmoe.costs.ops
    calibration: dict | None = None   # provenance of fitted parameters, free-form
    sources: dict[str, str] = Field(default_factory=dict)
    efficiency_prior: Priors | None = None   # spreads of the fitted `efficiency` (hold-out error)
    ideal: bool = False               # True: datasheet roofline, no priors, no calibration
    measured_tables: bool = True      # False: never interpolate the GPU's measured kernel tables

    @model_validator(mode="after")
    def _topology(self):
        if self.gpu_count % self.nodes:
            raise ValueError(
                f"gpu_count = {self.gpu_count} must be a multiple of nodes = {self.nodes}")
        if self.nodes > 1 and self.network is None:
            raise ValueError(
                f"nodes = {self.nodes}: a multi-node system needs a 'network:' interconnect")
        return self

    @property
    def gpus_per_node(self) -> int:
        return self.gpu_count // self.nodes


# ---------------------------------------------------------------------------- files and names

_KIND_DIR = {GPU: "gpus", Host: "hosts", Link: "links", Interconnect: "interconnects"}
_KIND_WORD = {GPU: "GPU", Host: "host", Link: "link", Interconnect: "interconnect"}


def _profiles_dir() -> Path:
    return Path(str(resources.files("specmoe.hwprofiles")))


def _names(sub: str) -> list[str]:
    d = _profiles_dir() / sub
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _existing_file(ref: str, base_dir: Path | None = None) -> Path | None:
    """The file `ref` names (relative to base_dir first, then cwd), or None if it is a bare name."""
    candidates = [Path(ref).expanduser()]
    if base_dir is not None and not Path(ref).is_absolute():
        candidates.insert(0, base_dir / ref)
    for p in candidates:
        if p.is_file():
            return p
    if ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref:
        raise SpecMoEError(f"hardware file {ref!r} not found")
    return None


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecMoEError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecMoEError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecMoEError(f"{path}: expected a YAML mapping of fields, got {type(data).__name__}")
    return data


def _submodel(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        ann = info.annotation if info else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _one_line(err: ValidationError, model: type[BaseModel], where: str) -> str:
    """pydantic's multi-line report as one line: file, field, value, what is allowed."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(x) for x in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            owner = _submodel(model, loc[:-1])
            allowed = list(owner.model_fields) if owner else []
            parts.append(f"unknown field {field!r}{suggest(str(loc[-1]), allowed)}; "
                         f"allowed: {', '.join(allowed)}")
        elif e["type"] == "missing":
            parts.append(f"{field}: required field is missing")
        elif not loc:  # model-level check: the message names the field itself
            parts.append(msg)
        else:
            value = repr(e.get("input"))
            value = value if len(value) <= 60 else value[:57] + "..."
            parts.append(f"{field} = {value}: {msg}")
    return f"{where}: " + "; ".join(parts)


def _validate(model: type[BaseModel], data: dict, where: str):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecMoEError(_one_line(e, model, where)) from None


# ---------------------------------------------------------------------------- loading

def _load_part(model: type[_Part], ref: Any, base_dir: Path | None = None, where: str = ""):
    """A GPU/Host/Link from an inline mapping, a YAML path, or a shipped profile name."""
    kind = _KIND_WORD[model]
    ref = os.fspath(ref) if isinstance(ref, os.PathLike) else ref
    if isinstance(ref, model):
        return ref
    if isinstance(ref, dict):
        return _validate(model, ref, f"{where} ({kind})" if where else kind)
    if not isinstance(ref, str) or not ref.strip():
        raise SpecMoEError(f"{where or kind}: {kind} must be a profile name, a YAML path or a "
                           f"mapping of fields, got {ref!r}")
    path = _existing_file(ref, base_dir)
    if path is None:
        sub = _KIND_DIR[model]
        path = _profiles_dir() / sub / f"{_norm(ref)}.yaml"
        if not path.is_file():
            raise SpecMoEError(f"unknown {kind} {ref!r}{suggest(_norm(ref), _names(sub))}; "
                               f"known: {', '.join(_names(sub))}")
    return _validate(model, _read_yaml(path), str(path))


def load_gpu(name_or_path: str) -> GPU:
    return _load_part(GPU, name_or_path)


def load_host(name_or_path: str) -> Host:
    return _load_part(Host, name_or_path)


def load_link(name_or_path: str) -> Link:
    return _load_part(Link, name_or_path)


def load_interconnect(name_or_path: str) -> Interconnect:
    return _load_part(Interconnect, name_or_path)


def _system_from_gpu(gpu: GPU, where: str) -> System:
    return _validate(System, {
        "name": gpu.name, "gpu": gpu,
        "host": _load_part(Host, gpu.default_host, where=f"{where}: default_host"),
        "link": _load_part(Link, gpu.default_link, where=f"{where}: default_link"),
    }, where)


def _system_from_file(path: Path, data: dict) -> System:
    where, base = str(path), path.parent
    gpu = _load_part(GPU, data["gpu"], base, where)
    parts = {
        "gpu": gpu,
        "host": _load_part(Host, data.get("host", gpu.default_host), base, where),
        "link": _load_part(Link, data.get("link", gpu.default_link), base, where),
    }
    for key in ("interconnect", "network"):
        if data.get(key) is not None:
            parts[key] = _load_part(Interconnect, data[key], base, where)
    return _validate(System, {"name": path.stem, **data, **parts}, where)


def _load_path(path: Path) -> System:
    data = _read_yaml(path)
    if "gpu" in data:
        return _system_from_file(path, data)
    if "hbm_gb" in data or "hbm_bw_gbps" in data:
        return _system_from_gpu(_validate(GPU, data, str(path)), str(path))
    raise SpecMoEError(f"{path}: neither a system profile (needs a 'gpu:' entry) nor a GPU "
                       "profile (needs hbm_gb, hbm_bw_gbps, ...)")


def load_system(name_or_path: str, host: str | None = None, link: str | None = None,
                gpu_count: int | None = None, ideal: bool = False) -> System:
    """A system from a YAML path, else a name in systems/, calibrated/, or gpus/ (composed with
    the GPU's default host and link). host/link (names or paths) and gpu_count override parts.
    ideal: predict at the datasheet roofline (an upper bound) instead of the best evidence."""
    name_or_path = os.fspath(name_or_path)
    path = _existing_file(name_or_path)
    if path is not None:
        system = _load_path(path)
    else:
        name, root = _norm(name_or_path), _profiles_dir()
        for sub in ("systems", "calibrated"):
            if (root / sub / f"{name}.yaml").is_file():
                system = _load_path(root / sub / f"{name}.yaml")
                break
        else:
            if not (root / "gpus" / f"{name}.yaml").is_file():
                known = sorted(set(_names("systems") + _names("calibrated") + _names("gpus")))
                raise SpecMoEError(f"unknown hardware {name_or_path!r}{suggest(name, known)}; "
                                   "see `specmoe hardware list` or pass a profile YAML path")
            system = _system_from_gpu(load_gpu(name), str(root / "gpus" / f"{name}.yaml"))
    system = _override(system, host, link, gpu_count)
    return as_ideal(system) if ideal else system


def as_ideal(system: System) -> System:
    """The same system marked to be predicted at its datasheet peaks (`--ideal`)."""
    return system if system.ideal else system.model_copy(update={"ideal": True})


def _override(system: System, host, link, gpu_count) -> System:
    changes: dict[str, Any] = {}
    name = system.name
    if host is not None:
        changes["host"] = _load_part(Host, host)
        if changes["host"].name != system.host.name:
            name += f"+{changes['host'].name}"
    if link is not None:
        changes["link"] = _load_part(Link, link)
        if changes["link"].name != system.link.name:
            name += f"+{changes['link'].name}"
    if gpu_count is not None:
        changes["gpu_count"] = gpu_count
    if not changes:
        return system
    data = {**system.model_dump(exclude=set(changes)), **changes, "name": name}
    return _validate(System, data, f"system {system.name!r} with overrides")


def list_hardware() -> dict[str, list[str]]:
    """Shipped profile names; "systems" includes calibrated profiles (loadable the same way)."""
    return {
        "systems": sorted(set(_names("systems")) | set(_names("calibrated"))),
        "gpus": _names("gpus"),
        "hosts": _names("hosts"),
        "links": _names("links"),
        "interconnects": _names("interconnects"),
    }


# ---------------------------------------------------------------------------- writing

def _plain(x: Any) -> Any:
    """JSON/YAML-safe copy: numpy scalars to Python numbers, tuples to lists, keys to str."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_plain(v) for v in x]
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):  # subclasses (numpy.int64 is not one, numpy.float64 is) to plain types
        return int(x)
    if isinstance(x, float):
        return float(x)
    if hasattr(x, "item") and callable(x.item):  # numpy scalar
        return x.item()
    if hasattr(x, "tolist"):  # numpy array
        return x.tolist()
    if hasattr(x, "isoformat"):
        return x.isoformat()
    return str(x)


def system_to_dict(system: System) -> dict:
    """Self-contained, JSON-able description: parts inline, nothing left to look up."""
    # flags at their defaults stay out: profiles and cache keys written before them still match
    defaults = {k for k in ("ideal", "measured_tables")
                if getattr(system, k) == System.model_fields[k].default}
    return _plain(system.model_dump(mode="python", exclude_none=False, exclude=defaults or None))


def save_system(system: System, path) -> None:
    """Write a YAML profile that load_system reads back to an equal System (atomic replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("# specmoe hardware profile (written by specmoe.inputs.hardware.save_system)\n"
            + yaml.safe_dump(system_to_dict(system), sort_keys=False, allow_unicode=True))
    atomic_write_text(path, text)
