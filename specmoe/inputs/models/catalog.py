"""The model catalog: shipped configs under specmoe/data/models, user imports under
$SPECMOE_MODELS_DIR (default ~/.specmoe/models)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from specmoe.errors import SpecMoEError, suggest
from specmoe.fileio import atomic_write_text
from specmoe.inputs.models.hf_export import to_hf_config
from specmoe.inputs.models.hf_import import _read_json, from_hf_config, normalize_name
from specmoe.inputs.models.spec import ModelSpec

CATALOG_DIR = Path(__file__).resolve().parents[2] / "data" / "models"
USER_DIR_ENV = "SPECMOE_MODELS_DIR"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def user_catalog_dir() -> Path:
    """Where `specmoe models import` writes: $SPECMOE_MODELS_DIR, else ~/.specmoe/models."""
    env = os.environ.get(USER_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".specmoe" / "models"


def _catalog() -> dict[str, Path]:
    """name -> file; user entries shadow shipped ones."""
    out: dict[str, Path] = {}
    for d in (CATALOG_DIR, user_catalog_dir()):
        if d.is_dir():
            out.update({p.stem: p for p in sorted(d.glob("*.json"))})
    return out


def list_models() -> list[str]:
    return sorted(_catalog())


def _resolve_path(p: Path) -> Path:
    return p / "config.json" if p.is_dir() else p


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A catalog model by name (case-insensitive, '_' for '-', or its source such as a Hugging Face
    repo id), or a config.json path (or a directory holding one)."""
    raw = str(name_or_path)
    if Path(raw).expanduser().exists():
        return from_hf_config(_resolve_path(Path(raw).expanduser()))
    cat = _catalog()
    key = normalize_name(raw)
    if key in cat:
        return from_hf_config(cat[key], name=key)
    for n, p in cat.items():  # by source, e.g. "mistralai/Mixtral-8x7B-v0.1"
        src = (_read_json(p).get("_specmoe") or {}).get("source", "")
        if src and src.lower() == raw.strip().lower():
            return from_hf_config(p, name=n)
    if raw.endswith(".json"):
        raise SpecMoEError(f"model config file {raw!r} does not exist")
    hint = suggest(key, cat) or f" (known: {', '.join(sorted(cat))})"
    raise SpecMoEError(f"model {raw!r} is not in the catalog{hint}; or give a config.json path")


def save_to_catalog(
    spec_or_config: ModelSpec | dict | str | Path,
    name: str | None = None,
    directory: str | Path | None = None,
) -> Path:
    """Write a model as an HF-style config.json with a "_specmoe" {"name", "source"} block,
    atomically, to `directory` (default: user_catalog_dir()) as <name>.json. Without `name`, the
    config's own name is used. The config is parsed first, so bad input never lands."""
    if isinstance(spec_or_config, ModelSpec):
        spec = spec_or_config
        cfg = None
    else:
        if isinstance(spec_or_config, (str, Path)):
            cfg = _read_json(_resolve_path(Path(spec_or_config).expanduser()))
        elif isinstance(spec_or_config, dict):
            cfg = dict(spec_or_config)
        else:
            raise SpecMoEError(
                f"save_to_catalog: expected a ModelSpec, config dict or path, "
                f"got {type(spec_or_config).__name__}"
            )
        spec = from_hf_config(cfg)  # validate before writing
    key = normalize_name(name) if name else spec.name
    if not _NAME_RE.match(key):
        raise SpecMoEError(
            f"model name {key!r}: use lowercase letters, digits, '.', '+' and '-' only"
        )
    if cfg is None:
        cfg = to_hf_config(dataclasses.replace(spec, name=key))
    else:
        meta = dict(cfg.get("_specmoe") or {})
        meta["name"] = key
        meta.setdefault("source", spec.source)
        cfg["_specmoe"] = meta
    out_dir = Path(directory) if directory is not None else user_catalog_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{key}.json"
    atomic_write_text(target, json.dumps(cfg, indent=2) + "\n")
    return target
