"""Validation: predict measured end-to-end engine runs with a (calibrated) profile, report the error.

    specmoe validate TRACES... --hardware CALIBRATED [--predictor auto|sim|analytic] [--markdown F]

Each end-to-end trace's header says what ran (model: the engine's MoEConfig; workload: batch,
prompt lengths, max_new_tokens, synthetic acceptance; policy: the shared Policy fields). The
measured throughput is the engine's: decoded tokens B·(max_new_tokens − 1) over the decode time
(first iteration start to last iteration end). The prediction runs the simulator where it is
importable, else the analytic model, on the same configuration:
- routing: the header's measured per-layer inclusion probabilities (`routing.inclusion_probs`)
  where present, else uniform;
- acceptance: the synthetic α the engine drew with, else α solved from the accepted tokens in the
  trace's `accept` events (acceptance is an input of the models, not something they predict);
- a static batch runs until its slowest sequence has max_new_tokens, so a speculative run takes
  more rounds than B·(max_new − 1)/(B·τ): `expected_rounds` counts them for i.i.d. acceptance.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specmoe.errors import SpecMoEError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
ENGINE_CACHE_FRACTION = 0.1  # the engine's default pinned fraction when Policy.cache_fraction is None


# ------------------------------------------------------------------------------------ runs

def model_spec_from_engine(cfg: dict, where: str = "trace"):
    """A ModelSpec (specmoe.models) for an engine MoEConfig dict: same shapes, same dtype."""
    from specmoe.models import from_hf_config, load_model

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
        raise SpecMoEError(f"{where}: header model.dtype={cfg['dtype']!r}: allowed {sorted(DTYPE_BYTES)}")
    b = DTYPE_BYTES[cfg["dtype"]]
    shared = int(cfg.get("shared_expert_ffn") or 0)
    hf = {"model_type": "qwen2_moe" if shared else "mixtral", "hidden_size": cfg["hidden"],
          "num_hidden_layers": cfg["layers"], "num_attention_heads": cfg["heads"],
          "num_key_value_heads": cfg["kv_heads"], "head_dim": cfg["head_dim"],
          "vocab_size": cfg["vocab"], "num_experts_per_tok": cfg["top_k"],
          "tie_word_embeddings": bool(cfg.get("tie_embeddings")),
          "_specmoe": {"name": "engine-model", "dtype_bytes": b, "expert_dtype_bytes": b, "kv_dtype_bytes": b}}
    if shared:
        hf.update(num_experts=cfg["experts"], moe_intermediate_size=cfg["expert_ffn"],
                  intermediate_size=cfg["expert_ffn"], shared_expert_intermediate_size=shared)
    else:
        hf.update(num_local_experts=cfg["experts"], intermediate_size=cfg["expert_ffn"])
    return from_hf_config(hf)


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
            return f"h{m.get('hidden')}/ffn{m.get('expert_ffn')}/L{m.get('layers')}/{m.get('dtype')}"
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
    from specmoe.policies import Policy, validate_policy

    d = header.get("policy")
    if not isinstance(d, dict) or not d.get("name"):
        raise SpecMoEError(f"{where}: header field 'policy' lacks 'name'")
    known = Policy.__dataclass_fields__
    pol = Policy(**{k: v for k, v in d.items() if k in known})
    validate_policy(pol)
    if pol.name in ("caching", "cpu") and pol.cache_fraction is None:
        pol = pol.with_(cache_fraction=_engine_cache_fraction(header, pol))
    return pol


def _engine_cache_fraction(header: dict, pol) -> float:
    """The pinned fraction the engine used: its slot pool is layers·pinned + experts slots."""
    m, eng = header.get("model") or {}, header.get("engine") or {}
    slots = eng.get("expert_slots")
    if slots and isinstance(m, dict) and m.get("layers") and m.get("experts"):
        pinned = (int(slots) - int(m["experts"])) / int(m["layers"])
        return max(0.0, min(1.0, pinned / int(m["experts"])))
    return ENGINE_CACHE_FRACTION


def _routing(header: dict, where: str):
    from specmoe.workload import Routing

    r = header.get("routing")
    if isinstance(r, dict) and r.get("inclusion_probs"):
        return Routing(kind="empirical", probs=tuple(map(tuple, r["inclusion_probs"])),
                       source=f"measured:{Path(where).name}")
    return Routing()


def read_run(trace_or_path) -> Run:
    """An end-to-end run from a trace (path or specmoe.trace.Trace)."""
    from specmoe.trace import Trace, read_trace

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
    from specmoe.workload import alpha_from_tau

    acc = [n for e in t.by_cat("accept") for n in (e.get("accepted") or []) if n is not None]
    if not acc:
        raise SpecMoEError(f"{where}: speculative run without 'accept' events carrying 'accepted'")
    tau_value = min(statistics.mean(acc) + 1.0, gamma + 1 - 1e-9)
    return alpha_from_tau(max(tau_value, 1.0), gamma), "measured (accept events)"


# ------------------------------------------------------------------------------------ prediction

def expected_rounds(batch: int, gamma: int, alpha: float, max_new: int, reps: int = 4000,
                    seed: int = 0) -> float:
    """Mean speculative rounds until every sequence of a static batch has max_new tokens (the first
    comes from the prefill), each round adding 1 + (leading accepted drafts, i.i.d. α) per sequence."""
    rng = np.random.default_rng(seed)
    length = np.ones((reps, batch))
    rounds = np.zeros(reps)
    while True:
        running = length.min(axis=1) < max_new
        if not running.any():
            return float(rounds.mean())
        ok = rng.random((reps, batch, gamma)) < alpha
        n = np.cumprod(ok, axis=2).sum(axis=2)
        length += np.where(running[:, None] & (length < max_new), n + 1, 0)
        rounds += running


def _sim_available() -> bool:
    try:
        from specmoe import sim
    except ImportError:
        return False
    return callable(getattr(sim, "simulate", None))


def predict_run(run: Run, system, params=None, predictor: str = "auto") -> dict[str, Any]:
    """Predicted iteration time and tokens/s of a run's configuration on `system`."""
    if predictor not in ("auto", "sim", "analytic"):
        raise SpecMoEError(f"predictor={predictor!r}: allowed auto, sim, analytic")
    if predictor == "sim" or (predictor == "auto" and _sim_available()):
        if not _sim_available():
            raise SpecMoEError("predictor=sim: specmoe.sim.simulate is not available")
        return _predict_sim(run, system, params)
    return _predict_analytic(run, system, params)


def _workload(run: Run):
    from specmoe.workload import Acceptance, Workload

    return Workload(batch=run.batch, prompt_len=run.prompt_len, output_len=run.max_new_tokens,
                    routing=run.routing, acceptance=Acceptance(alpha=run.alpha or 0.0,
                                                               source=run.alpha_source))


def _predict_analytic(run: Run, system, params) -> dict[str, Any]:
    from specmoe.analytic import Analytic
    from specmoe.costs import CostModel

    an = Analytic(run.model, system, _workload(run), CostModel(run.model, system, params))
    pol = run.policy if run.speculative else run.policy.with_(gamma=0)
    if run.speculative:
        res = an.evaluate(pol, alpha=run.alpha)
    elif pol.name == "specmoe":
        res = an.evaluate(pol, gamma=0)
    else:
        res = an.evaluate(pol)
    it = float(np.ravel(res.iteration_s)[0])
    return _tokens(run, it, "analytic")


def _predict_sim(run: Run, system, params) -> dict[str, Any]:
    """The simulator's mean iteration time on this configuration (API: specmoe.sim.simulate)."""
    from specmoe.sim import SimOptions, simulate

    pol, opts = run.policy, None
    if pol.name in ("caching", "cpu"):
        # The engine pins cache_fraction of each layer's experts and keeps E more slots, shared by
        # all layers, as LRU; the simulator's cache_fraction is all slots of a layer, of which
        # SimOptions.pin_fraction are pinned: the same slots, the LRU ones spread over layers.
        m, f = run.model, pol.cache_fraction
        slots = min(1.0, (round(f * m.num_experts) * m.num_moe_layers + m.num_experts)
                    / (m.num_moe_layers * m.num_experts))
        pol, opts = pol.with_(cache_fraction=slots), SimOptions(pin_fraction=f)
    res = simulate(model=run.model, system=system, workload=_workload(run), policy=pol,
                   params=params, options=opts)
    it = float(getattr(res, "iteration_s", None) or res["iteration_s"])
    return _tokens(run, it, "sim")


def _tokens(run: Run, iteration_s: float, predictor: str) -> dict[str, Any]:
    rounds = (expected_rounds(run.batch, run.gamma, run.alpha, run.max_new_tokens)
              if run.speculative else run.max_new_tokens - 1)
    decode_s = rounds * iteration_s
    return {"iteration_s": iteration_s, "rounds": rounds, "decode_s": decode_s,
            "tokens_per_s": run.batch * (run.max_new_tokens - 1) / decode_s, "predictor": predictor}


# ------------------------------------------------------------------------------------ validation

def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Repeats of one configuration together, in first-seen order."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.config_key(), []).append(r)
    return list(groups.values())


def validate(trace_paths: Sequence[str | Path], hardware, predictor: str = "auto",
             compare_analytic: bool = True, quantile: float = 0.5) -> dict[str, Any]:
    """Error table, one row per configuration: measured tokens/s from the `quantile` of its
    repeats' decode times (0.5: the median; low on a shared machine) against the prediction
    (made from the first repeat's workload: routing, α)."""
    from specmoe.calibrate import device_identity
    from specmoe.hardware import System, load_system

    system = hardware if isinstance(hardware, System) else load_system(hardware)
    if not trace_paths:
        raise SpecMoEError("validate: no trace files given")
    calib_id = (system.calibration or {}).get("device_identity")
    rows = []
    for group in group_runs([read_run(p) for p in sorted(map(str, trace_paths))]):
        run = group[0]
        pred = predict_run(run, system, predictor=predictor)
        tps = [r.tokens_per_s for r in group]
        decode = float(np.quantile([r.decode_s for r in group], quantile))
        meas = run.batch * (run.max_new_tokens - 1) / decode
        same = calib_id is not None and device_identity(run.header.get("device")) == calib_id
        row = {"trace": Path(run.path).name, "policy": run.policy.name, "batch": run.batch,
               "gamma": run.gamma, "draft_experts": run.policy.draft_experts if run.speculative else 0,
               "alpha": run.alpha, "model": run.model_label, "repeats": len(group),
               "measured_tokens_per_s": meas, "measured_spread_pct": 100 * (max(tps) - min(tps)) / meas,
               "predicted_tokens_per_s": pred["tokens_per_s"],
               "measured_iteration_ms": 1e3 * float(np.quantile([r.mean_iteration_s for r in group], quantile)),
               "predicted_iteration_ms": pred["iteration_s"] * 1e3,
               "error_pct": 100 * (pred["tokens_per_s"] - meas) / meas, "predictor": pred["predictor"],
               "device": "calibrated" if same else "other"}
        if compare_analytic and pred["predictor"] != "analytic":
            ana = predict_run(run, system, predictor="analytic")
            row["analytic_error_pct"] = 100 * (ana["tokens_per_s"] - meas) / meas
        rows.append(row)
    return {"hardware": system.name, "calibrated": bool(system.calibration), "rows": rows,
            "quantile": quantile, "summary": summarize(rows)}


def summarize(rows: list[dict], exclude_policies: Sequence[str] = ()) -> dict[str, Any]:
    """Median and max |error| per device kind (calibrated / other), optionally leaving policies out."""
    out = {}
    for dev in sorted({r["device"] for r in rows}):
        sel = [r for r in rows if r["device"] == dev and r["policy"] not in exclude_policies]
        if not sel:
            continue
        errs = [abs(r["error_pct"]) for r in sel]
        out[dev] = {"configurations": len(sel), "median_abs_error_pct": statistics.median(errs),
                    "max_abs_error_pct": max(errs),
                    "mean_signed_error_pct": statistics.mean(r["error_pct"] for r in sel)}
    return out


def markdown_table(result: dict[str, Any], summaries: dict[str, dict] | None = None) -> str:
    """The rows, then one summary line per device kind (and per extra summary given)."""
    ana = any("analytic_error_pct" in r for r in result["rows"])
    lines = ["| model | policy | batch | γ | N | α | repeats | measured tok/s | spread % | "
             "predicted tok/s | error % |" + (" analytic error % |" if ana else "")
             + " measured ms/iter | predicted ms/iter | predictor | device |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if ana else "")
             + "---:|---:|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (r["model"], r["policy"], r["batch"], r["gamma"])):
        a = "-" if r["alpha"] is None else f"{r['alpha']:.2f}"
        extra = f" {r['analytic_error_pct']:+.1f} |" if ana else ""
        lines.append(f"| {r['model']} | {r['policy']} | {r['batch']} | {r['gamma']} | {r['draft_experts']} | "
                     f"{a} | {r['repeats']} | {r['measured_tokens_per_s']:.1f} | {r['measured_spread_pct']:.0f} | "
                     f"{r['predicted_tokens_per_s']:.1f} | {r['error_pct']:+.1f} |{extra} "
                     f"{r['measured_iteration_ms']:.2f} | {r['predicted_iteration_ms']:.2f} | "
                     f"{r['predictor']} | {r['device']} |")
    lines.append("")
    for title, summary in {"all policies": result["summary"], **(summaries or {})}.items():
        for dev, s in summary.items():
            lines.append(f"- {title}, {dev} device: {s['configurations']} configurations, median |error| "
                         f"{s['median_abs_error_pct']:.1f}%, max |error| {s['max_abs_error_pct']:.1f}%, "
                         f"mean signed {s['mean_signed_error_pct']:+.1f}%")
    return "\n".join(lines)


def add_commands(sub) -> None:
    p = sub.add_parser("validate", help="predict measured end-to-end engine runs; print the error table")
    p.add_argument("traces", nargs="+", help="end-to-end engine traces (.jsonl or .jsonl.gz)")
    p.add_argument("--hardware", required=True, help="calibrated profile (name or YAML)")
    p.add_argument("--predictor", default="auto", choices=("auto", "sim", "analytic"),
                   help="simulator where importable (auto), or the analytic model")
    p.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    p.add_argument("--quantile", type=float, default=0.5,
                   help="quantile of each configuration's repeats (decode time) compared")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    if not 0.0 <= args.quantile <= 1.0:
        raise SpecMoEError(f"--quantile={args.quantile}: allowed [0, 1]")
    result = validate(args.traces, args.hardware, args.predictor, quantile=args.quantile)
    table = markdown_table(result)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(f"{result['hardware']} ({'calibrated' if result['calibrated'] else 'not calibrated'})")
        print(table)
    return 0
