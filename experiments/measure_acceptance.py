"""Measure SpecMoE self-drafting acceptance on the shipped tiny MoE and write \
specmoe/data/tiny/acceptance.json.

The model is loaded through the engine like any Hugging Face Mixtral checkpoint; prompts are the
starts of held-out windows (the training script's file split, its tokenizer). For each draft-expert
count N (1, 2, 4, ..., E), draft set and temperature (0 = greedy, 1 = exact speculative sampling)
the engine generates with policy specmoe and every round's accepted-draft count n per sequence is
logged (the engine's `accept` trace instants). From those:
  - per-position acceptance r_i = P(draft i+1 accepted | drafts 1..i accepted), at γ = 16;
  - τ(γ) = mean accepted + 1 tokens per sequence per verification, γ = 1..16;
  - α fitted to τ(γ) under the i.i.d. model τ(γ) = (1 − α^(γ+1)) / (1 − α) (relative least squares
    over γ = 1..16), with its fit error.

Draft sets: `random` (N experts per layer drawn per batch of prompts), `hot` (the N most used
experts per layer over a calibration split of the held-out windows, routed by the engine's own
prefill, pinned for the whole run), `hottemporal` (the engine's: the N most used in the batch's
last verification), and optionally `hot_prefill` (the engine's `hot`: most used in the batch's
prefill).

Why not one run at γ = 16 for every γ: truncating it, τ(γ) = 1 + Σ_{i<γ} P(n > i), is exact per
round (a round's first γ drafts and their tests do not depend on how many more are drafted), but a
run at γ visits other round starts: at γ = 16 nearly every round starts right after a rejection,
at γ = 4 many start right after 4 acceptances, inside an easy stretch. Acceptance comes in runs,
so truncation tends to read τ(γ) low (the report's truncation check says by how much). For
HotTemporal the draft set itself depends on γ (the last verification covered γ + 1 positions per
sequence). So every draft
set runs directly at each γ of --direct-gammas (default 1, 2, 4, 8, 16); a γ between two of those
follows the larger run's truncated curve, rescaled to pass through both direct values, the JSON
says which is which (tau_source), and the truncation error is reported (truncation_check). Direct
runs are separate samples, so the table is made non-decreasing by pooling adjacent violators; the
raw values stay in tau_measured.

    python experiments/measure_acceptance.py                     # ~9-12 minutes on one CPU thread
    python experiments/measure_acceptance.py --report-only       # rewrite the report from the JSON
    python experiments/measure_acceptance.py --prompts 8 --new-tokens 32 --out /tmp/a.json \
--report /tmp/r/a.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_tiny_moe as tm  # the one home of the data split and tokenizer
from specmoe.engine.affinity import affinity_ranking
from specmoe.engine.generate import Engine
from specmoe.engine.tracer import NullTracer, device_fingerprint
from specmoe.engine.weights import load_weights

from specmoe.inputs.policies import make_policy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "specmoe" / "data" / "tiny" / "acceptance.json"
DEFAULT_MD = REPO / "experiments" / "reports" / "acceptance_tiny.md"
DRAFT_SETS = ("random", "hot", "hottemporal", "hot_prefill")
ALPHA_MAX = 0.9999  # specmoe.inputs.workload.Acceptance needs α < 1; N = E accepts everything


# ----------------------------------------------------------------------------- data


def heldout_windows(model_dir: Path, seq_len: int) -> tuple[np.ndarray, dict]:
    """Held-out windows [W, seq_len] re-derived from the training summary (same files, same
    seed)."""
    summary = json.loads((model_dir / "train_summary.json").read_text())
    data = summary["data"]
    root = Path(data["stdlib_root"])
    _, held = tm.split_files(tm.stdlib_files(root), data["heldout_frac"], data["seed"])
    names = [str(p.relative_to(root)) for p in held]
    if names != summary["heldout_files"]:
        raise ValueError(
            f"held-out files under {root} differ from those in {model_dir}/train_summary.json"
        )
    stream = tm.encode_docs(tm.load_tokenizer(model_dir), tm.read_texts(held))
    meta = {
        "source": "Python standard library held-out files (split of experiments/train_tiny_moe.py)",
        "stdlib_root": str(root),
        "heldout_files": len(held),
        "heldout_tokens": len(stream),
        "split_seed": data["seed"],
        "heldout_frac": data["heldout_frac"],
    }
    return tm.heldout_windows(stream, seq_len), meta


def split_windows(windows: np.ndarray, n_prompts: int, n_calib: int, prompt_len: int, seed: int):
    """Even windows calibrate the hot set, odd ones give prompts (a seeded choice); no overlap."""
    calib_idx = np.arange(0, len(windows), 2)[: n_calib or None]
    odd = np.arange(1, len(windows), 2)
    if n_prompts > len(odd):
        raise ValueError(f"--prompts {n_prompts}: only {len(odd)} held-out evaluation windows")
    prompt_idx = np.sort(np.random.default_rng(seed).choice(odd, n_prompts, replace=False))
    prompts = [windows[i, :prompt_len].tolist() for i in prompt_idx]
    return windows[calib_idx], prompts, calib_idx.tolist(), prompt_idx.tolist()


# ----------------------------------------------------------------------------- engine runs


class AcceptLog(NullTracer):
    """A tracer that keeps only the engine's per-round `accept` instants (accepted drafts per
    row)."""

    def __init__(self) -> None:
        self.rounds: list[list[int | None]] = []

    def instant(self, name, cat, **fields) -> None:
        if name == "accept":
            self.rounds.append(fields["accepted"])


def pin_fixed(provider, sets: list[list[int]]) -> None:
    """Make a specmoe provider (draft_set='random', so nothing re-pins later) start from `sets`."""

    def setup() -> None:
        for layer, experts in enumerate(sets):
            for e in experts:
                provider.store.prefetch(layer, e)
                provider.store.release(layer, e, "pin")

    provider.setup = setup


def hot_sets(w, calib: np.ndarray, batch: int) -> np.ndarray:
    """Per-layer expert use counts [L, E] over the calibration windows, from the engine's
    prefill."""
    cfg = w.cfg
    counts = np.zeros((cfg.layers, cfg.experts), dtype=np.int64)
    eng = Engine(
        w, make_policy("ondemand"), device="cpu", max_batch=batch, max_seq_len=calib.shape[1] + 2
    )
    for s in range(0, len(calib), batch):
        res = eng.generate(calib[s : s + batch].tolist(), 1, record_routing=True)
        for rec in res.routing:
            if rec["phase"] == "prefill":
                np.add.at(counts[rec["layer"]], np.asarray(rec["ids"]).reshape(-1), 1)
    return counts


def top_n(counts: np.ndarray, n: int) -> list[list[int]]:
    return [sorted(np.argsort(-row, kind="stable")[:n].tolist()) for row in counts]


def run(ctx: dict, draft_set: str, n: int, gamma: int, temperature: float) -> list[list[int]]:
    """Accepted drafts per round, per prompt: [[n_round1, n_round2, ...], ...]."""
    engine_set = {
        "random": "random",
        "hot": "random",
        "hottemporal": "hottemporal",
        "hot_prefill": "hot",
    }[draft_set]
    pol = make_policy(
        "specmoe", gamma=gamma, draft_experts=n, draft_set=engine_set, substitution=True
    )
    log = AcceptLog()
    a = ctx["args"]
    # a sequence that is done keeps drafting from up to max_new + γ tokens: room for 2γ beyond
    eng = Engine(
        ctx["weights"],
        pol,
        device="cpu",
        tracer=log,
        max_batch=a.batch,
        max_seq_len=a.prompt_len + a.new_tokens + 2 * gamma + 2,
        affinity=ctx["affinity"],
    )
    if draft_set == "hot":
        pin_fixed(eng.provider, top_n(ctx["hot_counts"], n))
    prompts = ctx["prompts"]
    per_seq: list[list[int]] = [[] for _ in prompts]
    ctx["last_outputs"] = [[] for _ in prompts]
    for bi, s in enumerate(range(0, len(prompts), a.batch)):
        log.rounds = []
        # seed: the batch's random draft sets and sampling draws; the same for every configuration
        res = eng.generate(
            prompts[s : s + a.batch], a.new_tokens, temperature=temperature, seed=a.seed * 1000 + bi
        )
        ctx["last_outputs"][s : s + a.batch] = res.tokens
        for accepted in log.rounds:
            for j, k in enumerate(accepted):
                if k is not None:
                    per_seq[s + j].append(int(k))
    return per_seq


# ----------------------------------------------------------------------------- statistics


def tau_model(alpha: float, gammas: np.ndarray) -> np.ndarray:
    if alpha >= 1.0:
        return gammas + 1.0
    return (1.0 - alpha ** (gammas + 1.0)) / (1.0 - alpha)


def curve(per_seq: list[list[int]], gamma_max: int) -> dict:
    """τ(γ) for γ = 1..gamma_max by truncation, and per-position conditional acceptance."""
    ns = np.asarray([k for seq in per_seq for k in seq])
    more = np.array([(ns > i).sum() for i in range(gamma_max)], dtype=float)  # P(n > i) · R
    rounds = len(ns)
    prev = np.concatenate(([rounds], more[:-1]))
    rate = np.divide(more, prev, out=np.full(gamma_max, np.nan), where=prev > 0)
    tau = 1.0 + np.cumsum(more) / rounds
    return {"rounds": rounds, "tau": tau, "per_position": rate, "reached": prev.astype(int)}


def fit_alpha(tau: np.ndarray) -> dict:
    """α minimising the relative squared error of τ(γ), γ = 1..len(tau)."""
    g = np.arange(1, len(tau) + 1, dtype=float)
    if np.allclose(tau, g + 1.0):
        return {"alpha": ALPHA_MAX, "rms_rel_err": 0.0, "max_rel_err": 0.0, "capped": True}

    def loss(a):
        return float(np.mean((tau_model(a, g) / tau - 1.0) ** 2))

    a = float(
        minimize_scalar(loss, bounds=(0.0, ALPHA_MAX), method="bounded", options={"xatol": 1e-7}).x
    )
    rel = tau_model(a, g) / tau - 1.0
    return {
        "alpha": a,
        "rms_rel_err": float(np.sqrt(np.mean(rel**2))),
        "max_rel_err": float(np.abs(rel).max()),
        "capped": a >= ALPHA_MAX - 1e-6,
    }


def bootstrap_tau(per_seq: list[list[int]], gamma: int, reps: int, rng) -> np.ndarray:
    """τ(γ) (truncated) over prompts resampled with replacement: rounds pooled per resample."""
    idx = rng.integers(0, len(per_seq), size=(reps, len(per_seq)))
    acc = [np.minimum(np.asarray(s, dtype=float), gamma) for s in per_seq]
    tot = np.array([a.sum() for a in acc])
    cnt = np.array([len(a) for a in acc], dtype=float)
    return 1.0 + tot[idx].sum(1) / cnt[idx].sum(1)


# ----------------------------------------------------------------------------- the measurement


def measure(ctx: dict) -> dict:
    a = ctx["args"]
    g_max = a.gamma_max
    out: dict = {}
    for T in a.temperatures:
        tkey = f"{T:g}"
        res: dict = {ds: {} for ds in a.draft_sets}
        raw: dict = {ds: {} for ds in a.draft_sets}
        for n in a.draft_experts:
            full = n == ctx["E"]
            for ds in a.draft_sets:
                t0 = time.perf_counter()
                if full and ds != a.draft_sets[0]:  # every set is all experts: same run
                    res[ds][n], raw[ds][n] = res[a.draft_sets[0]][n], raw[a.draft_sets[0]][n]
                    continue
                entry, per_seq = measure_one(ctx, ds, n, T, full)
                if full:  # all experts resident: the output is the target's own generation
                    seqs = [p + o for p, o in zip(ctx["prompts"], ctx["last_outputs"], strict=True)]
                    ctx["meta"]["repetition"][f"T={tkey} output"] = repeat_share(seqs, a.prompt_len)
                entry["seconds"] = round(time.perf_counter() - t0, 1)
                res[ds][n], raw[ds][n] = entry, per_seq
                print(
                    f"T={tkey} {ds:12s} N={n}: tau(4,8,16)="
                    + ",".join(
                        f"{entry['tau_by_gamma'][g]:.3f}" for g in (4, 8, g_max) if g <= g_max
                    )
                    + f" alpha={entry['alpha']:.4f} rounds={entry['rounds'][g_max]}"
                    f" ({entry['seconds']}s)",
                    flush=True,
                )
        out[tkey] = {"results": res, "comparisons": compare(ctx, raw, res)}
    return out


def measure_one(ctx: dict, ds: str, n: int, T: float, full: bool) -> tuple[dict, dict]:
    """Direct runs at each γ of --direct-gammas; the γ between them by truncation from the next
    larger direct run; per-position rates from the γ_max run."""
    a = ctx["args"]
    g_max = a.gamma_max
    gammas = [g_max] if full else sorted(set(a.direct_gammas) | {g_max})
    runs = {g: run(ctx, ds, n, g, T) for g in gammas}
    curves = {g: curve(runs[g], g) for g in gammas}
    raw, source = fill(gammas, curves)
    tau = isotonic(raw)
    fit = fit_alpha(tau)
    top = curves[g_max]
    check = {}
    for i, g in enumerate(gammas[:-1]):
        nxt = gammas[i + 1]
        check[g] = {
            "direct": float(curves[g]["tau"][-1]),
            "truncated_from_gamma_max": float(top["tau"][g - 1]),
            "truncated_from_next": float(curves[nxt]["tau"][g - 1]),
            "next": nxt,
            "rounds": curves[g]["rounds"],
        }
    ci = {}
    for g in gammas:
        boot = bootstrap_tau(runs[g], g, a.bootstrap, np.random.default_rng(a.seed))
        ci[g] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    entry = {
        "alpha": fit["alpha"],
        "alpha_fit": fit,
        "alpha_first_position": float(top["per_position"][0]),
        "tau_by_gamma": {g: float(tau[g - 1]) for g in range(1, g_max + 1)},
        "tau_measured": {g: float(raw[g - 1]) for g in range(1, g_max + 1)},
        "tau_source": source,
        "monotone_adjusted": {
            g: float(tau[g - 1] - raw[g - 1])
            for g in range(1, g_max + 1)
            if abs(tau[g - 1] - raw[g - 1]) > 1e-12
        },
        "tau_ci95": ci,
        "per_position": nan_to_none(top["per_position"]),
        "per_position_reached": top["reached"].tolist(),
        "rounds": {g: curves[g]["rounds"] for g in gammas},
        "truncation_check": check,
    }
    return entry, runs


def fill(gammas: list[int], curves: dict) -> tuple[np.ndarray, dict]:
    """τ(1..γ_max): direct values at the run γ; between two direct runs lo < h < hi, the truncated
    curve of the hi run rescaled to pass through both direct values (truncation has the shape but
    reads low, see the module docstring); below the smallest direct γ, plain truncation."""
    g_max = gammas[-1]
    tau, source = np.zeros(g_max), {}
    for h in range(1, g_max + 1):
        hi = min(x for x in gammas if x >= h)
        tr = curves[hi]["tau"]
        lower = [x for x in gammas if x < h]
        if hi == h:
            tau[h - 1], source[h] = tr[-1], "direct"
        elif not lower:
            tau[h - 1], source[h] = tr[h - 1], f"truncated {hi}"
        else:
            lo = lower[-1]
            d_lo, d_hi = curves[lo]["tau"][-1], tr[-1]
            span = tr[hi - 1] - tr[lo - 1]
            frac = (tr[h - 1] - tr[lo - 1]) / span if span > 0 else (h - lo) / (hi - lo)
            tau[h - 1] = d_lo + frac * (d_hi - d_lo)
            source[h] = f"between {lo} and {hi}"
    return tau, source


def isotonic(y: np.ndarray) -> np.ndarray:
    """Pool adjacent violators (equal weights): the closest non-decreasing sequence. τ(γ) cannot
    fall with γ in expectation; direct runs at different γ are separate samples and may."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def repeat_share(seqs: list[list[int]], start: int, n: int = 4) -> float:
    """Share of tokens at positions >= start that complete an n-gram seen earlier in the
    sequence."""
    hits = total = 0
    for seq in seqs:
        seen = {tuple(seq[i - n + 1 : i + 1]) for i in range(n - 1, start)}
        for i in range(start, len(seq)):
            gram = tuple(seq[i - n + 1 : i + 1])
            hits += gram in seen
            total += 1
            seen.add(gram)
    return hits / max(total, 1)


def nan_to_none(x) -> list:
    return [None if not np.isfinite(v) else float(v) for v in x]


def compare(ctx: dict, raw: dict, res: dict) -> dict:
    """τ(γ) of each draft set minus random's at each direct γ, paired by prompt (bootstrap)."""
    a = ctx["args"]
    out: dict = {}
    for other in [d for d in ("hottemporal", "hot", "hot_prefill") if d in raw and "random" in raw]:
        for n in a.draft_experts:
            if n == ctx["E"]:
                continue
            for g in sorted(set(raw[other][n]) & set(raw["random"][n])):
                rng = np.random.default_rng(a.seed + 100 * n + g)
                idx = rng.integers(0, len(ctx["prompts"]), size=(a.bootstrap, len(ctx["prompts"])))
                means = []
                for which in (other, "random"):
                    acc = [np.asarray(s, dtype=float) for s in raw[which][n][g]]
                    tot = np.array([x.sum() for x in acc])
                    cnt = np.array([len(x) for x in acc], dtype=float)
                    means.append(tot[idx].sum(1) / np.maximum(cnt[idx].sum(1), 1))
                d = means[0] - means[1]
                point = (
                    curve(raw[other][n][g], g)["tau"][-1] - curve(raw["random"][n][g], g)["tau"][-1]
                )
                out[f"{other}_minus_random/N={n}/gamma={g}"] = {
                    "draft_set": other,
                    "N": n,
                    "gamma": g,
                    "tau_diff": float(point),
                    "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
                }
    return out


# ----------------------------------------------------------------------------- output


def to_json(ctx: dict, measured: dict, wall: float) -> dict:
    a = ctx["args"]

    def pick(res, key):
        return {ds: {str(n): e[key] for n, e in per_n.items()} for ds, per_n in res.items()}

    def tau_table(res):
        return {
            ds: {
                str(n): {str(g): t for g, t in e["tau_by_gamma"].items()} for n, e in per_n.items()
            }
            for ds, per_n in res.items()
        }

    by_t = {}
    for tkey, m in measured.items():
        by_t[tkey] = {
            "alpha_by_draft_experts": pick(m["results"], "alpha"),
            "tau_by_gamma": tau_table(m["results"]),
            "per_position": pick(m["results"], "per_position"),
            "details": {
                ds: {
                    str(n): jsonable(without(e, "tau_by_gamma", "per_position"))
                    for n, e in per_n.items()
                }
                for ds, per_n in m["results"].items()
            },
            "comparisons": m["comparisons"],
        }
    p = by_t[f"{a.temperatures[0]:g}"]
    return {
        "schema": "specmoe.acceptance/1",
        "alpha_by_draft_experts": p["alpha_by_draft_experts"],
        "tau_by_gamma": p["tau_by_gamma"],
        "per_position": p["per_position"],
        "primary_temperature": a.temperatures[0],
        "by_temperature": by_t,
        "definitions": {
            "alpha": (
                "fitted to tau(gamma), gamma = 1..gamma_max, minimising relative squared error "
                f"under tau = (1 - alpha^(gamma+1)) / (1 - alpha); capped at {ALPHA_MAX:g} (N = E)"
            ),
            "tau_by_gamma": "mean tokens per sequence per verification (accepted drafts + 1)",
            "per_position": "[i]: P(draft i+1 accepted | drafts 1..i accepted), pooled over rounds",
            "draft_sets": {
                "random": (
                    "N experts per layer drawn per batch of prompts (engine draft_set=random)"
                ),
                "hot": "N most used per layer over the calibration windows' prefill routing, fixed",
                "hottemporal": "engine: N most used in the batch's last verification",
                "hot_prefill": (
                    "engine draft_set=hot: N most used in the batch's own prefill, fixed"
                ),
            },
            "tau_source": (
                "direct: a run at that gamma; 'between A and B': the direct run at B's "
                "truncated curve 1 + sum_{i<gamma} P(n > i), rescaled linearly to pass "
                "through the direct values at A and B; 'truncated B': that curve as is"
            ),
            "tau_measured": "before pooling adjacent violators (tau_by_gamma is non-decreasing)",
            "truncation_check": "direct tau(gamma) against truncation from gamma_max and from the "
            "next larger direct gamma",
        },
        "metadata": ctx["meta"]
        | {
            "wall_seconds": round(wall, 1),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        },
    }


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- report


def write_report(doc: dict, md_path: Path) -> None:
    """Markdown tables and verdicts, and the plotly figures beside it (same name, .html)."""
    write_atomic(md_path, markdown(doc, md_path.with_suffix(".html").name))
    fig = figure(doc)
    tmp = md_path.with_name(md_path.stem + f".tmp{os.getpid()}.html")
    fig.write_html(tmp, include_plotlyjs="cdn")
    os.replace(tmp, md_path.with_suffix(".html"))


def _fmt(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(doc: dict, html_name: str) -> str:
    m = doc["metadata"]
    d, mod = m["data"], m["model"]
    g_max = m["gamma_max"]
    head = (
        f"Measured by `{m['command'].strip()}` on {m['date']} ({m['device'].get('name')}, "
        f"{m['device'].get('threads')} torch thread(s), torch {m['device'].get('torch')}); "
        f"wall time {m['wall_seconds']:.0f} s ({m.get('cpu_seconds', 0):.0f} s CPU). "
        f"Data: `specmoe/data/tiny/acceptance.json`; figures: [{html_name}]({html_name})."
    )
    setup = (
        f"Model: `{mod['path']}` ({mod['layers']} layers, {mod['experts']} experts, "
        f"top-{mod['top_k']}, hidden {mod['hidden']}, {mod.get('train_steps')} training steps, "
        f"held-out loss {_fmt(mod.get('heldout_loss'))} nats/token), loaded by the engine from its "
        f"safetensors, run in {mod['engine_dtype']} on the CPU. Prompts: the first "
        f"{d['prompt_len']} tokens of {d['prompts']} held-out windows (odd-numbered "
        f"{d['window_len']}-token windows of the training script's held-out files, chosen with "
        f"seed {m['seed']}); {d['new_tokens']} new tokens each, batches of {d['batch']}. The "
        f"`hot` set comes from the engine's prefill routing of {len(d['calibration_windows'])} "
        "even-numbered (calibration) windows."
    )
    how = (
        "How: policy `specmoe` with substitution; every round's accepted-draft count per sequence "
        "is logged. τ(γ) = mean (accepted + 1) per sequence-round; per-position rate i = P(draft i "
        f"accepted | drafts before it accepted), from the γ = {g_max} runs. Every draft set runs "
        f"directly at γ ∈ {m['direct_gammas']}; a γ between two of those follows the larger run's "
        "truncated curve 1 + Σ_(i<γ) P(n > i), rescaled to pass through both direct values. "
        f"Truncating one γ = {g_max} run would be exact per round but visits other round starts "
        "(nearly all right after a rejection) and, for HotTemporal, another draft set (built "
        "from γ+1 positions); the truncation check below measures what that costs. The table is "
        "made non-decreasing in γ by pooling adjacent violators (raw values in `tau_measured`). "
        f"α is fitted to τ(1..{g_max}) under τ = (1 − α^(γ+1))/(1 − α) (relative least squares)."
    )
    lines = [
        "# Speculative-decoding acceptance of the tiny MoE (SpecMoE self-drafting)",
        "",
        head,
        "",
        setup,
        "",
        how,
        "",
    ]
    for tkey, bt in doc["by_temperature"].items():
        lines += table(bt, tkey, g_max)
    lines += verdicts(doc, g_max)
    lines += truncation_section(doc)
    lines += per_position_section(doc)
    agree = m.get("routing_json_agreement")
    cov = ", ".join(
        f"N={n}: {100 * v:.0f}% (uniform {100 * int(n) / mod['experts']:.0f}%)"
        for n, v in m.get("hot_coverage", {}).items()
    )
    hot = (
        f"Share of routed (token, expert) slots the top-N experts serve on the calibration split, "
        f"mean over layers: {cov}. The flatter the routing, the less a hot set can gain over a "
        "random one. "
        + (
            "Mean overlap of the calibration split's top-N sets with those of "
            "specmoe/data/tiny/routing.json (all held-out text) as it was on "
            f"{m.get('routing_json_checked') or m['date']}, per N: "
            f"{agree} (routing.json names no model hash: a low overlap can mean it describes "
            "another training run of the model)."
            if agree
            else "routing.json was not present when this ran."
        )
    )
    rep = m.get("repetition", {})
    rep_line = ", ".join(f"{k}: {100 * v:.0f}%" for k, v in rep.items())
    lines += [
        "## Hot set",
        "",
        hot,
        "",
        "## Caveats",
        "",
        (
            "- A small model trained briefly on code. Share of generated tokens that complete a "
            f"4-gram already seen in the same sequence (prompt + output): {rep_line}. Repeated "
            "spans are easy for any draft, so acceptance here is that of this model on this "
            "text, not a statement about large models."
        ),
        (
            f"- HotTemporal's set comes from the whole batch's verification ({d['batch']} "
            "sequences × (γ+1) positions); a smaller batch gives a more local set, a larger one "
            "a more global one."
        ),
        (
            "- `random` is a few draws (one per batch of prompts); its τ depends on which experts "
            "were drawn. Confidence intervals are bootstrap over prompts (rounds pooled)."
        ),
        "- α of N = E is capped below 1 (the planner's Acceptance needs α < 1).",
        "",
    ]
    return "\n".join(lines)


def table(bt: dict, tkey: str, g_max: int) -> list[str]:
    gs = [g for g in (4, 8, g_max) if g <= g_max]
    name = "greedy (temperature 0)" if float(tkey) == 0 else f"sampled (temperature {tkey})"
    out = [
        f"## {name}",
        "",
        "| draft set | N | α (fit) | fit error rms / max | first-position rate | "
        + " | ".join(f"τ({g})" for g in gs)
        + f" | τ({g_max}) 95% CI | rounds at γ={g_max} |",
        "|---|---|---|---|---|" + "---|" * len(gs) + "---|---|",
    ]
    for ds, per_n in bt["details"].items():
        for n, e in per_n.items():
            f = e["alpha_fit"]
            ci = e["tau_ci95"][str(g_max)]
            out.append(
                f"| {ds} | {n} | {e['alpha']:.4f} | {100 * f['rms_rel_err']:.1f}% / "
                f"{100 * f['max_rel_err']:.1f}% | {_fmt(e['alpha_first_position'])} | "
                + " | ".join(f"{bt['tau_by_gamma'][ds][n][str(g)]:.3f}" for g in gs)
                + f" | {ci[0]:.2f}–{ci[1]:.2f} | {e['rounds'][str(g_max)]} |"
            )
    return out + [""]


def summary(doc: dict, g_max: int) -> list[str]:
    """Counts behind the design's check, over every temperature, draft set and γ measured."""
    series = rising = 0
    for bt in doc["by_temperature"].values():
        for per_n in bt["tau_by_gamma"].values():
            ns = sorted(per_n, key=int)
            for g in range(1, g_max + 1):
                taus = [per_n[n][str(g)] for n in ns]
                series += 1
                rising += all(b > a for a, b in pairwise(taus))
    out = [
        (
            f"- τ(γ) rises strictly with N in {rising} of {series} series (temperature × draft "
            f"set × γ = 1..{g_max})."
        )
    ]
    for other in ("hottemporal", "hot", "hot_prefill"):
        cells = [
            c
            for bt in doc["by_temperature"].values()
            for c in bt["comparisons"].values()
            if c["draft_set"] == other
        ]
        if cells:
            pos = sum(c["tau_diff"] > 0 for c in cells)
            up = sum(c["ci95"][0] > 0 for c in cells)
            down = sum(c["ci95"][1] < 0 for c in cells)
            out.append(
                f"- {other} − random over {len(cells)} (temperature, N < E, direct γ) cells: "
                f"Δτ > 0 in {pos}; 95% CI above 0 in {up}, below 0 in {down}."
            )
    return out


def verdicts(doc: dict, g_max: int) -> list[str]:
    out = [
        "## The design's check: τ rises with N, HotTemporal ≥ random",
        "",
        *summary(doc, g_max),
        "",
    ]
    for tkey, bt in doc["by_temperature"].items():
        for ds, per_n in bt["tau_by_gamma"].items():
            ns = sorted(per_n, key=int)
            for g in sorted({4, g_max}):
                taus = [per_n[n][str(g)] for n in ns]
                rises = all(b > a for a, b in pairwise(taus))
                out.append(
                    f"- T={tkey}, {ds}: τ({g}) over N = {', '.join(ns)}: "
                    + ", ".join(f"{t:.2f}" for t in taus)
                    + (" — rises with N." if rises else " — does NOT rise strictly with N.")
                )
    out += [
        "",
        (
            "Δτ = τ(draft set) − τ(random) on the same prompts and seeds, direct runs, 95% "
            "bootstrap CI over prompts; * marks a CI that excludes 0."
        ),
        "",
    ]
    for tkey, bt in doc["by_temperature"].items():
        comps = list(bt["comparisons"].values())
        gammas = sorted({c["gamma"] for c in comps})
        out += [
            f"T={tkey}:",
            "",
            "| draft set − random | N | " + " | ".join(f"Δτ({g})" for g in gammas) + " |",
            "|---|---|" + "---|" * len(gammas),
        ]
        rows: dict = {}
        for c in comps:
            lo, hi = c["ci95"]
            star = "*" if lo > 0 or hi < 0 else ""
            rows.setdefault((c["draft_set"], c["N"]), {})[c["gamma"]] = (
                f"{c['tau_diff']:+.2f}{star} ({lo:+.2f}, {hi:+.2f})"
            )
        for (ds, n), cells in rows.items():
            out.append(f"| {ds} | {n} | " + " | ".join(cells.get(g, "–") for g in gammas) + " |")
        out.append("")
    return out


def truncation_section(doc: dict) -> list[str]:
    out = [
        "## Truncation check: direct run at γ vs truncation of a larger-γ run",
        "",
        (
            "| T | draft set | N | γ | τ direct | truncated from γ_max | error | "
            "truncated from next direct γ | error |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    errs = []
    for tkey, bt in doc["by_temperature"].items():
        for ds, per_n in bt["details"].items():
            for n, e in per_n.items():
                for g, c in e["truncation_check"].items():
                    e1 = c["truncated_from_gamma_max"] / c["direct"] - 1
                    e2 = c["truncated_from_next"] / c["direct"] - 1
                    errs.append(e1)
                    out.append(
                        f"| {tkey} | {ds} | {n} | {g} | {c['direct']:.3f} | "
                        f"{c['truncated_from_gamma_max']:.3f} | {100 * e1:+.1f}% | "
                        f"{c['truncated_from_next']:.3f} (γ={c['next']}) | {100 * e2:+.1f}% |"
                    )
    if errs:
        out += [
            "",
            (
                f"Truncation from γ_max vs direct: median error {100 * np.median(errs):+.1f}%, "
                f"range {100 * min(errs):+.1f}% … {100 * max(errs):+.1f}% over {len(errs)} pairs."
            ),
        ]
    return out + [""]


def per_position_section(doc: dict) -> list[str]:
    out = ["## Per-position acceptance (γ_max runs; P(draft i accepted | all before accepted))", ""]
    for tkey, bt in doc["by_temperature"].items():
        out.append(f"T={tkey}:")
        out.append("")
        for ds, per_n in bt["per_position"].items():
            for n, rates in per_n.items():
                out.append(f"- {ds} N={n}: " + " ".join(_fmt(r, 2) for r in rates))
        out.append("")
    return out


def figure(doc: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    temps = list(doc["by_temperature"])
    fig = make_subplots(
        rows=3,
        cols=len(temps),
        subplot_titles=[
            *(f"τ(γ), T={t} (markers measured, lines fitted i.i.d. α)" for t in temps),
            *(f"per-position acceptance at γ_max, T={t}" for t in temps),
            *(f"fitted α vs N, T={t}" for t in temps),
        ],
        vertical_spacing=0.08,
    )
    colors = {
        "random": "#636efa",
        "hot": "#ef553b",
        "hottemporal": "#00cc96",
        "hot_prefill": "#ab63fa",
    }
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    for c, tkey in enumerate(temps, start=1):
        bt = doc["by_temperature"][tkey]
        for ds, per_n in bt["details"].items():
            col = colors.get(ds, "#444")
            for k, (n, e) in enumerate(per_n.items()):
                table, rates = bt["tau_by_gamma"][ds][n], bt["per_position"][ds][n]
                g = np.array([int(x) for x in table])
                t = np.array(list(table.values()))
                name = f"{ds} N={n}"
                fig.add_trace(
                    go.Scatter(
                        x=g,
                        y=t,
                        mode="markers",
                        marker={"color": col, "size": 5},
                        name=name,
                        legendgroup=name,
                        showlegend=c == 1,
                    ),
                    1,
                    c,
                )
                fig.add_trace(
                    go.Scatter(
                        x=g,
                        y=tau_model(e["alpha"], g.astype(float)),
                        mode="lines",
                        line={"color": col, "dash": dashes[k % len(dashes)], "width": 1},
                        name=name + " fit",
                        legendgroup=name,
                        showlegend=False,
                    ),
                    1,
                    c,
                )
                fig.add_trace(
                    go.Scatter(
                        x=np.arange(1, len(rates) + 1),
                        y=rates,
                        mode="lines+markers",
                        line={"color": col, "dash": dashes[k % len(dashes)]},
                        name=name,
                        legendgroup=name,
                        showlegend=False,
                    ),
                    2,
                    c,
                )
            ns = [int(n) for n in per_n]
            fig.add_trace(
                go.Scatter(
                    x=ns,
                    y=[per_n[str(n)]["alpha"] for n in ns],
                    mode="lines+markers",
                    line={"color": col},
                    name=ds,
                    legendgroup=ds,
                    showlegend=False,
                ),
                3,
                c,
            )
        fig.update_xaxes(title_text="γ", row=1, col=c)
        fig.update_xaxes(title_text="draft position", row=2, col=c)
        fig.update_xaxes(title_text="N draft experts per layer", type="log", row=3, col=c)
        fig.update_yaxes(title_text="tokens per verification", row=1, col=c)
        fig.update_yaxes(title_text="acceptance", range=[0, 1.02], row=2, col=c)
        fig.update_yaxes(title_text="α", row=3, col=c)
    m = doc["metadata"]
    fig.update_layout(
        height=1300,
        width=1300,
        title=f"SpecMoE self-drafting acceptance, tiny MoE "
        f"({m['data']['prompts']} held-out prompts, {m['date']})",
    )
    return fig


# ----------------------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", default=str(tm.DEFAULT_OUT))
    p.add_argument(
        "--prompts", type=int, default=32, help="held-out prompts (a multiple of --batch)"
    )
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32, help="generated tokens per prompt")
    p.add_argument("--batch", type=int, default=8, help="sequences per generate() call")
    p.add_argument("--gamma-max", type=int, default=16)
    p.add_argument(
        "--direct-gammas",
        type=int_list,
        default=[1, 2, 4, 8, 16],
        help="γ run directly (γ_max always); others truncated from the next larger",
    )
    p.add_argument("--draft-experts", type=int_list, default=None, help="default 1, 2, 4, ..., E")
    p.add_argument("--draft-sets", default="random,hot,hottemporal", help=f"of {DRAFT_SETS}")
    p.add_argument("--temperatures", default="0,1")
    p.add_argument(
        "--calib-windows",
        type=int,
        default=0,
        help="even-numbered held-out windows for the hot set (0: all of them)",
    )
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(DEFAULT_JSON))
    p.add_argument("--report", default=str(DEFAULT_MD), help="markdown report (HTML beside it)")
    p.add_argument(
        "--report-only", action="store_true", help="rewrite the report from --out's JSON"
    )
    a = p.parse_args(argv)
    a.draft_sets = tuple(s for s in a.draft_sets.split(",") if s)
    bad = [s for s in a.draft_sets if s not in DRAFT_SETS]
    if bad or "random" not in a.draft_sets:
        p.error(f"--draft-sets {bad or a.draft_sets}: allowed {DRAFT_SETS}, 'random' included")
    a.temperatures = [float(t) for t in a.temperatures.split(",")]
    if a.prompts % a.batch:
        p.error(
            f"--prompts {a.prompts} must be a multiple of --batch {a.batch} (HotTemporal's set "
            "comes from a whole batch's verification)"
        )
    if not all(1 <= g <= a.gamma_max for g in a.direct_gammas):
        p.error(f"--direct-gammas {a.direct_gammas}: each must lie in 1..--gamma-max {a.gamma_max}")
    a.direct_gammas = sorted(set(a.direct_gammas) | {a.gamma_max})
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.report_only:
        out = Path(a.out)
        doc = json.loads(out.read_text())
        meta = doc["metadata"]
        agree = routing_agreement(np.asarray(meta["hot_counts"]), meta["draft_experts"])
        if agree != meta.get("routing_json_agreement"):  # routing.json was rewritten since the run
            meta["routing_json_agreement"] = agree
            meta["routing_json_checked"] = datetime.datetime.now().isoformat(timespec="seconds")
            write_atomic(out, json.dumps(doc, indent=1) + "\n")
        write_report(doc, Path(a.report))
        return
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    model_dir = Path(a.model_dir)
    w = load_weights(model_dir, dtype="float32")  # bf16 weights, fp32 arithmetic on the CPU
    E = w.cfg.experts
    a.draft_experts = a.draft_experts or sorted(
        {2**i for i in range(E.bit_length()) if 2**i < E} | {E}
    )
    windows, data = heldout_windows(model_dir, w.cfg.max_seq_len)
    calib, prompts, calib_idx, prompt_idx = split_windows(
        windows, a.prompts, a.calib_windows, a.prompt_len, a.seed
    )
    counts = hot_sets(w, calib, a.batch)
    ctx = {
        "args": a,
        "weights": w,
        "E": E,
        "prompts": prompts,
        "hot_counts": counts,
        "affinity": affinity_ranking(w.experts),
    }
    summary = json.loads((model_dir / "train_summary.json").read_text())
    ctx["meta"] = {
        "model": {
            "name": "tiny",
            "path": rel(model_dir),
            "sha256": sha256(model_dir / "model.safetensors"),
            "layers": w.cfg.layers,
            "experts": E,
            "top_k": w.cfg.top_k,
            "hidden": w.cfg.hidden,
            "train_steps": summary.get("steps"),
            "heldout_loss": summary.get("heldout_loss"),
            "engine_dtype": w.cfg.dtype,
        },
        "data": data
        | {
            "windows": len(windows),
            "window_len": int(windows.shape[1]),
            "calibration_windows": calib_idx,
            "prompt_windows": prompt_idx,
            "prompts": a.prompts,
            "prompt_len": a.prompt_len,
            "new_tokens": a.new_tokens,
            "batch": a.batch,
        },
        "hot_counts": counts.tolist(),
        "hot_source": "engine prefill routing of the calibration windows",
        "gamma_max": a.gamma_max,
        "direct_gammas": a.direct_gammas,
        "draft_experts": a.draft_experts,
        "temperatures": a.temperatures,
        "seed": a.seed,
        "substitution": True,
        "command": (
            "python experiments/measure_acceptance.py "
            + shlex.join(argv if argv is not None else sys.argv[1:])
        ).strip(),
        "device": {k: v for k, v in device_fingerprint("cpu").items() if k != "host"},
    }
    ctx["meta"]["routing_json_agreement"] = routing_agreement(counts, a.draft_experts)
    ctx["meta"]["hot_coverage"] = hot_coverage(counts, a.draft_experts)
    held = [windows[i, : a.prompt_len + a.new_tokens].tolist() for i in prompt_idx]
    ctx["meta"]["repetition"] = {"held-out text": repeat_share(held, a.prompt_len)}
    measured = measure(ctx)
    wall = time.perf_counter() - t_start
    ctx["meta"]["cpu_seconds"] = round(time.process_time(), 1)
    doc = to_json(ctx, measured, wall)
    out = Path(a.out)
    write_atomic(out, json.dumps(doc, indent=1) + "\n")
    if a.report:
        write_report(doc, Path(a.report))
    print(f"wall {wall:.0f}s; wrote {out}")


def routing_agreement(counts: np.ndarray, ns: list[int]) -> dict | None:
    """Mean overlap |A ∩ B| / N of the calibration split's top-N sets (A) with routing.json's
    (B)."""
    path = REPO / "specmoe" / "data" / "tiny" / "routing.json"
    if not path.is_file():
        return None
    p = np.asarray(json.loads(path.read_text())["inclusion_probs"])
    if p.shape != counts.shape:
        return {
            "error": f"routing.json shape {list(p.shape)} differs from the model's "
            f"{list(counts.shape)}"
        }
    return {
        str(n): float(
            np.mean(
                [
                    len(set(x) & set(y)) / n
                    for x, y in zip(top_n(counts, n), top_n(p, n), strict=True)
                ]
            )
        )
        for n in ns
    }


def hot_coverage(counts: np.ndarray, ns: list[int]) -> dict:
    """Share of the calibration split's routed slots that the top-N experts serve (mean over
    layers); N/E for uniform routing. The less concentrated, the less a hot set can gain over a
    random one."""
    share = -np.sort(-counts, axis=1) / counts.sum(1, keepdims=True)
    return {str(n): float(share[:, :n].sum(1).mean()) for n in ns}


def rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    main()
