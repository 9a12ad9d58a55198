"""Reading measured end-to-end engine runs from traces: what ran (model, workload, policy), on
which device, and what it measured. Calibration and validation both start here."""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specmoe.errors import SpecMoEError
from specmoe.inputs.models import load_model
from specmoe.inputs.models.hf_import import spec_from_dims
from specmoe.inputs.models.spec import DTYPE_BYTES
from specmoe.inputs.policies import Policy, validate_policy
from specmoe.inputs.workload import Routing, alpha_from_tau
from specmoe.measure.trace import Trace, read_trace

# Device fingerprint keys that must agree for traces to be fitted together.
IDENTITY_KEYS = {"cuda": ("type", "name", "capability", "memory_bytes"),
                 "cpu": ("type", "name", "cpu_count", "threads")}


# ------------------------------------------------------------------------------------ traces

def device_identity(fp: dict | None) -> dict[str, Any]:
    """The part of a device fingerprint that decides whether two traces ran on the same device."""
    fp = fp or {}
    keys = IDENTITY_KEYS.get(str(fp.get("type")), ("type", "name"))
    return {k: fp.get(k) for k in keys}


# legacy traces: the engine's pinned fraction when cache_fraction was None
ENGINE_CACHE_FRACTION = 0.1


# ------------------------------------------------------------------------------------ runs

def model_spec_from_engine(cfg: dict, where: str = "trace"):
    """A ModelSpec (specmoe.inputs.models) for an engine MoEConfig dict: same shapes, same dtype."""

    if isinstance(cfg, str):
        return load_model(cfg)
    if not isinstance(cfg, dict):
        raise SpecMoEError(f"{where}: header field 'model' must be the engine's MoEConfig "
                           f"(a mapping) or a catalog name, got {type(cfg).__name__}")
    need = ("hidden", "layers", "heads", "kv_heads", "head_dim", "experts", "top_k", "expert_ffn",
            "vocab", "dtype")
    missing = [k for k in need if cfg.get(k) is None]
    if missing:
        raise SpecMoEError(f"{where}: header model lacks field(s) {missing}")
    if cfg["dtype"] not in DTYPE_BYTES:
        raise SpecMoEError(
            f"{where}: header model.dtype={cfg['dtype']!r}: allowed {sorted(DTYPE_BYTES)}"
        )
    return spec_from_dims(
        "engine-model",
        DTYPE_BYTES[cfg["dtype"]],
        cfg["hidden"],
        cfg["expert_ffn"],
        cfg["heads"],
        cfg["kv_heads"],
        cfg["head_dim"],
        cfg["experts"],
        cfg["top_k"],
        cfg["vocab"],
        cfg["layers"],
        int(cfg.get("shared_expert_ffn") or 0),
        bool(cfg.get("tie_embeddings")),
    )


@dataclass
class Run:
    """A measured end-to-end run: its configuration and what it achieved."""

    path: str
    header: dict
    model: Any
    batch: int
    prompt_len: int
    max_new_tokens: int
    policy: Any
    speculative: bool
    alpha: float | None
    alpha_source: str
    routing: Any
    iterations: int
    decode_s: float
    iteration_times: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * (self.max_new_tokens - 1) / self.decode_s

    @property
    def mean_iteration_s(self) -> float:
        return self.decode_s / self.iterations

    @property
    def iteration_spread(self) -> float:
        t = self.iteration_times
        if len(t) < 4:
            return float("nan")
        q1, q3 = np.percentile(t, [25, 75])
        return float((q3 - q1) / np.median(t))

    @property
    def gamma(self) -> int:
        return self.policy.gamma if self.speculative else 0

    def config_key(self) -> tuple:
        """Runs with equal keys are repeats of one configuration."""
        return (json.dumps(self.header.get("model"), sort_keys=True, default=str), self.policy,
                self.batch, self.prompt_len, self.max_new_tokens, self.speculative,
                None if self.alpha is None else round(self.alpha, 6),
                json.dumps(self.header.get("device"), sort_keys=True, default=str))

    @property
    def model_label(self) -> str:
        m = self.header.get("model")
        if isinstance(m, dict):
            return (
                f"h{m.get('hidden')}/ffn{m.get('expert_ffn')}/L{m.get('layers')}/{m.get('dtype')}"
            )
        return str(m)

    def label(self) -> str:
        p = self.policy
        s = f"{self.model_label} {p.name} B={self.batch}"
        if self.speculative:
            s += f" γ={p.gamma} N={p.draft_experts}"
        return s


def _field(d: dict, key: str, where: str):
    if not isinstance(d, dict) or d.get(key) is None:
        raise SpecMoEError(f"{where}: header lacks field {key!r}")
    return d[key]


def _policy(header: dict, where: str):
    d = header.get("policy")
    if not isinstance(d, dict) or not d.get("name"):
        raise SpecMoEError(f"{where}: header field 'policy' lacks 'name'")
    d = _legacy_residency(d, header)
    known = Policy.__dataclass_fields__
    pol = Policy(**{k: v for k, v in d.items() if k in known})
    validate_policy(pol)
    return pol


def _legacy_residency(d: dict, header: dict) -> dict:
    """Traces written before residency had explicit counts carry cache_fraction: the engine pinned
    round(f·E) experts per layer (10% when unset) and kept every other slot of its pool
    (expert_slots − layers·pinned) as LRU for caching; cpu freed them."""
    if "cache_fraction" not in d or d["name"] not in ("caching", "cpu"):
        return d
    m, eng = header.get("model") or {}, header.get("engine") or {}
    experts, layers = int(m.get("experts", 0) or 0), int(m.get("layers", 0) or 0)
    f = d["cache_fraction"] if d["cache_fraction"] is not None else ENGINE_CACHE_FRACTION
    pinned = round(f * experts)
    slots = int(eng.get("expert_slots") or 0)
    lru = max(slots - layers * pinned, 0) if d["name"] == "caching" else 0
    return {**d, "resident_experts": pinned, "lru_slots": lru}


def _routing(header: dict, where: str):

    r = header.get("routing")
    if isinstance(r, dict) and r.get("inclusion_probs"):
        return Routing(kind="empirical", probs=tuple(map(tuple, r["inclusion_probs"])),
                       source=f"measured:{Path(where).name}")
    return Routing()


def read_run(trace_or_path) -> Run:
    """An end-to-end run from a trace (path or specmoe.measure.trace.Trace)."""

    t = trace_or_path if isinstance(trace_or_path, Trace) else read_trace(trace_or_path)
    where, h = str(t.path), t.header
    wl = _field(h, "workload", where)
    batch = int(_field(wl, "batch", f"{where}: workload"))
    max_new = int(_field(wl, "max_new_tokens", f"{where}: workload"))
    prompts = wl.get("prompt_lens") or ([wl["prompt_len"]] if wl.get("prompt_len") else None)
    if not prompts:
        raise SpecMoEError(f"{where}: header workload lacks 'prompt_lens'")
    its = sorted(t.by_cat("iteration"), key=lambda e: e["ts_us"])
    if max_new < 2 or not its:
        raise SpecMoEError(f"{where}: no decode iterations (cat 'iteration' events; max_new_tokens="
                           f"{max_new}); validation needs an end-to-end run")
    decode_s = (its[-1]["ts_us"] + its[-1]["dur_us"] - its[0]["ts_us"]) * 1e-6
    pol = _policy(h, where)
    spec = bool(wl.get("speculative", pol.speculative and batch >= pol.spec_min_batch))
    alpha, src = None, "none"
    if spec:
        alpha, src = _alpha(t, wl, pol.gamma, where)
    return Run(where, h, model_spec_from_engine(h.get("model"), where), batch,
               round(statistics.mean(prompts)), max_new, pol, spec, alpha, src,
               _routing(h, where), len(its), decode_s, [e["dur_us"] * 1e-6 for e in its])


def _alpha(t, wl: dict, gamma: int, where: str) -> tuple[float, str]:
    a = wl.get("synthetic_acceptance")
    if a is not None:
        return min(float(a), 0.999999), "synthetic"

    acc = [n for e in t.by_cat("accept") for n in (e.get("accepted") or []) if n is not None]
    if not acc:
        raise SpecMoEError(f"{where}: speculative run without 'accept' events carrying 'accepted'")
    tau_value = min(statistics.mean(acc) + 1.0, gamma + 1 - 1e-9)
    return alpha_from_tau(max(tau_value, 1.0), gamma), "measured (accept events)"


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Repeats of one configuration together, in first-seen order."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.config_key(), []).append(r)
    return list(groups.values())
