"""Tile configs of the fused MoE kernels: a default that works on every device, plus per-device
JSON overrides written by `moe_tune.tune_fused_moe` (kernels/configs/<device_name>.json).

File format (one file per device, as named by `_runtime.device_name()`):

    {"device": "NVIDIA_H100_80GB_HBM3", "triton": "3.6.0", "torch": "...",
     "fused_moe": {"E=8,N=14336,K=4096,topk=2,dtype=bfloat16":
                       {"1": {"BLOCK_SIZE_M": 16, ...}, "64": {...}}}}

N is the expert intermediate size F, K the hidden size D; the inner keys are token counts T, and
the entry whose T is nearest the call's is used (as in vLLM's per-device configs). A config holds
BLOCK_SIZE_M (also the alignment block size), BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps
and num_stages; the same config drives both the gate/up and the down kernel.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from specmoe.fileio import atomic_write_text

from . import _runtime as rt

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps",
               "num_stages")


def shape_key(num_experts: int, inter: int, hidden: int, top_k: int, dtype: torch.dtype) -> str:
    dtype_name = str(dtype).replace("torch.", "")
    return f"E={num_experts},N={inter},K={hidden},topk={top_k},dtype={dtype_name}"


def default_config(num_tokens: int, num_experts: int, top_k: int) -> dict:
    """Tiles by expected tokens per expert. Shared memory stays under ~100 KB (fits every
    NVIDIA GPU from sm_80 on), so this works anywhere; tuned JSON files do better."""
    if rt.interpreting():  # few, mid-sized programs run fastest under the interpreter
        return {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1,
                    "num_warps": 4, "num_stages": 1}
    per_expert = num_tokens * top_k / max(num_experts, 1)
    if per_expert <= 16:  # decode: weight-bandwidth bound, many thin tiles
        return {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1,
                    "num_warps": 4, "num_stages": 3}
    if per_expert <= 128:
        return {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 8,
                    "num_warps": 4, "num_stages": 3}
    return {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 8,
                "num_warps": 4, "num_stages": 3}


def config_path(device: str | None = None) -> Path:
    return CONFIG_DIR / f"{device or _device_name()}.json"


@functools.lru_cache(maxsize=1)
def _device_name() -> str:
    return rt.device_name()


_generation = 0  # bumped whenever this process writes a config file (invalidates the cache)


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> dict:
    with open(path) as f:
        return json.load(f)


def load_device_configs(path: Path | str | None = None) -> dict:
    """The {shape_key: {T: config}} table of a device file, or {} if there is none."""
    p = Path(path) if path is not None else config_path()
    if not p.exists():
        return {}
    return _load(str(p), p.stat().st_mtime).get("fused_moe", {})


def validate_config(cfg: dict) -> dict:
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise rt.SpecMoEError(f"config: missing keys {missing}; allowed: a dict with {CONFIG_KEYS}")
    for k in CONFIG_KEYS:
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise rt.SpecMoEError(f"config[{k!r}]: got {v!r}; allowed: an int >= 1")
    for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "num_warps"):
        v = cfg[k]
        if v & (v - 1) or (k != "num_warps" and v < 16):
            raise rt.SpecMoEError(f"config[{k!r}]: got {v}; allowed: a power of two"
                                  + (" >= 16 (tl.dot minimum)" if k != "num_warps" else ""))
    return {k: cfg[k] for k in CONFIG_KEYS}


def get_fused_moe_config(num_tokens: int, num_experts: int, hidden: int, inter: int, top_k: int,
                         dtype: torch.dtype, path: Path | str | None = None) -> dict:
    """The tuned config for this shape on this device (nearest token count), else the default.

    Cached: the device's own file is read once per process (no device-name lookup or stat() per
    fused_moe call; a tune in this process invalidates it); an explicit path is re-read when its
    modification time changes."""
    stamp = None
    if path is not None:
        p = Path(path)
        stamp = p.stat().st_mtime_ns if p.exists() else None
    return dict(_cached_config(num_tokens, num_experts, hidden, inter, top_k, dtype,
                               None if path is None else str(path), stamp, _generation))


@functools.lru_cache(maxsize=4096)
def _cached_config(num_tokens, num_experts, hidden, inter, top_k, dtype, path, stamp,
                   generation) -> dict:
    table = load_device_configs(path).get(shape_key(num_experts, inter, hidden, top_k, dtype))
    if table:
        nearest = min(table, key=lambda m: abs(int(m) - num_tokens))
        return validate_config(table[nearest])
    return default_config(num_tokens, num_experts, top_k)


def write_configs(path, key: str, best: dict[int, dict]) -> None:
    """Merge tuned configs {T: config} for shape `key` into the device's JSON file."""
    import triton

    global _generation
    _generation += 1
    p = Path(path) if path is not None else config_path()
    data = json.loads(p.read_text()) if p.exists() else {}
    data.update(device=rt.device_name(), triton=triton.__version__, torch=torch.__version__)
    table = data.setdefault("fused_moe", {}).setdefault(key, {})
    table.update({str(T): cfg for T, cfg in best.items()})
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(data, indent=1, sort_keys=True) + "\n")
