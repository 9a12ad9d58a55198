"""Why the planner chose what it chose: where the time goes, what limits it, why speculation is
on or off. Every statement is computed from the analytic model, never from a rule of thumb.

"Limited by" is the resource whose doubling speeds the chosen configuration up most (2× PCIe,
2× HBM bandwidth, 2× GPU FLOP/s, 2× host CPU where experts run there, half the draft rejections
where it speculates). When no such change gains at least `BALANCED_BELOW` (1.15×), the
configuration is "balanced": no single resource is worth buying more of.
"""
from __future__ import annotations

from typing import Any

from specmoe.costs.ops import prediction_costs
from specmoe.inputs.setup import Setup
from specmoe.inputs.workload import tau
from specmoe.predictors.analytic import Analytic

LIMITS = {
    "pcie": "PCIe (expert fetches)",
    "hbm": "HBM bandwidth",
    "compute": "GPU compute",
    "host_cpu": "host CPU (experts computed there)",
    "acceptance": "acceptance (draft quality)",
}
# Below this speed-up from any single doubled resource the configuration is called balanced: a
# 15% gain is about what calibration error and run-to-run spread can hide (DESIGN.md §11 bars).
BALANCED_BELOW = 1.15


def _scaled(setup: Setup, link=1.0, hbm=1.0, compute=1.0, host=1.0) -> Analytic:
    """The analytic model with one resource made faster (the cost model's own rates, scaled)."""
    costs = prediction_costs(setup.model, setup.system)
    costs.link_bw *= link
    costs.hbm_bw *= hbm
    costs.peak_flops *= compute
    costs.cpu_flops *= host
    costs.dram_bw *= host
    return Analytic(setup.model, setup.system, setup.workload, costs=costs)


def sensitivities(setup: Setup, candidate: dict) -> dict[str, float]:
    """Speed-up of `candidate` from 2× link, 2× HBM, 2× FLOP/s (2× host CPU for `cpu`), and half
    the draft rejections (speculating specmoe)."""
    pol = setup.policy.with_(name=candidate["policy"], gamma=candidate["gamma"],
                             draft_experts=candidate["draft_experts"])
    alpha = setup.workload.acceptance.alpha_at(pol.gamma, pol.draft_experts)

    def tps(an: Analytic, a: float | None = None) -> float:
        return float(an.evaluate(pol, alpha=a).tokens_per_s)

    base = tps(_scaled(setup))
    out = {"pcie": tps(_scaled(setup, link=2.0)) / base, "hbm": tps(_scaled(setup, hbm=2.0)) / base,
           "compute": tps(_scaled(setup, compute=2.0)) / base}
    if pol.name == "cpu":
        out["host_cpu"] = tps(_scaled(setup, host=2.0)) / base
    if pol.name == "specmoe" and pol.gamma > 0:
        out["acceptance"] = tps(_scaled(setup), 1.0 - (1.0 - alpha) / 2.0) / tps(
            _scaled(setup), alpha
        )
    return out


SCALE_ARGS = {"pcie": "link", "hbm": "hbm", "compute": "compute", "host_cpu": "host"}


def pair_speedup(
    setup: Setup, candidate: dict, sens: dict[str, float]
) -> tuple[tuple[str, str], float] | None:
    """The two resources with the largest single gains, doubled together, and that speed-up: in a
    balanced configuration the time is shared between them (None when fewer than two apply)."""
    top = sorted((k for k in sens if k in SCALE_ARGS), key=lambda k: -sens[k])[:2]
    if len(top) < 2:
        return None
    pol = setup.policy.with_(name=candidate["policy"], gamma=candidate["gamma"],
                             draft_experts=candidate["draft_experts"])
    both = _scaled(setup, **{SCALE_ARGS[k]: 2.0 for k in top}).evaluate(pol).tokens_per_s
    return (top[0], top[1]), float(both) / float(_scaled(setup).evaluate(pol).tokens_per_s)


def limiting_resource(sens: dict[str, float], balanced_below: float = BALANCED_BELOW) -> str:
    """The key of `sens` with the largest speed-up, or "balanced" when none reaches
    `balanced_below`."""
    limit = max(sens, key=sens.get)
    return limit if sens[limit] >= balanced_below else "balanced"


def limit_line(
    sens: dict[str, float], limit: str, pair=None, balanced_below: float = BALANCED_BELOW
) -> str:
    """One sentence naming the limit and every sensitivity behind it."""
    gains = ", ".join(
        f"2× {k} → {v:.2f}×" if k != "acceptance" else f"half the rejections → {v:.2f}×"
        for k, v in sens.items()
    )
    if limit != "balanced":
        return f"limited by {LIMITS[limit]} ({gains})"
    both = f"; 2× {pair[0][0]} and {pair[0][1]} together → {pair[1]:.2f}×" if pair else ""
    return f"balanced: no single resource gains {balanced_below:.2f}× when doubled ({gains}{both})"


def explain_choice(setup: Setup, best: dict, fitting: list[dict]) -> dict[str, Any]:
    """Where the time goes, what limits the chosen configuration, and why speculation is on or
    off."""
    it = best["iteration_ms"] / 1e3
    shares = {k: v / it for k, v in best["breakdown"].items() if v > 0}
    sens = sensitivities(setup, best)
    limit = limiting_resource(sens)
    pair = pair_speedup(setup, best, sens) if limit == "balanced" else None
    drafting = (f"with γ={best['gamma']}, N={best['draft_experts']}" if best["gamma"]
                else "without speculation")
    by_share = sorted(shares.items(), key=lambda kv: -kv[1])
    lines = [
        f"{best['policy']} {drafting}: {best['tokens_per_s']:,.1f} tokens/s (analytic)",
        "time per iteration: " + ", ".join(f"{k} {v:.0%}" for k, v in by_share),
        limit_line(sens, limit, pair),
    ]
    spec = speculation_verdict(setup, best, fitting)
    lines.append(spec["why"])
    out = {"time_shares": shares, "sensitivity": sens, "limited_by": limit,
           "balanced_below": BALANCED_BELOW, "speculation": spec, "summary": lines}
    if pair:
        out["pair_sensitivity"] = {"resources": list(pair[0]), "speedup": pair[1]}
    return out


def speculation_verdict(setup: Setup, best: dict, fitting: list[dict]) -> dict[str, Any]:
    """Why speculation is on or off, from the best speculative and best non-speculative
    candidates."""
    spec = [c for c in fitting if c["gamma"] > 0]
    plain = [c for c in fitting if c["gamma"] == 0]
    if not spec or not plain:
        return {
            "on": best["gamma"] > 0,
            "why": "speculation not compared (only one kind of candidate searched)",
        }
    s = max(spec, key=lambda c: c["tokens_per_s"])
    p = max(plain, key=lambda c: c["tokens_per_s"])
    out = {"on": best["gamma"] > 0, "best_speculative": _brief(s), "best_plain": _brief(p)}
    t = float(tau(s["alpha"], s["gamma"]))
    if best["gamma"] > 0:
        out["why"] = (
            f"speculation on: {t:.2f} tokens per verification (α={s['alpha']:.3f}) share each "
            f"fetched expert, {s['h2d_bytes_per_token'] / 1e6:,.1f} MB over PCIe per token vs "
            f"{p['h2d_bytes_per_token'] / 1e6:,.1f} MB for the best non-speculative option "
            f"({p['policy']}, {p['tokens_per_s']:,.1f} tokens/s; the choice is "
            f"{s['tokens_per_s'] / p['tokens_per_s']:.2f}× faster)"
        )
        return out
    loss = 1.0 - s["tokens_per_s"] / p["tokens_per_s"]
    if p["h2d_bytes_per_token"] == 0:
        reason = (
            f"{p['policy']} moves no expert over PCIe (experts resident"
            + (" or computed on the CPU" if p["policy"] == "cpu" else "")
            + "): nothing to amortise"
        )
    elif s["h2d_bytes_per_token"] >= p["h2d_bytes_per_token"]:
        reason = (
            f"at batch {setup.workload.batch} verifying B(γ+1) positions fetches more bytes per "
            f"accepted token ({s['h2d_bytes_per_token'] / 1e6:,.1f} MB) than plain decoding "
            f"({p['h2d_bytes_per_token'] / 1e6:,.1f} MB): few tokens share each expert"
        )
    elif s["breakdown"].get("draft", 0.0) > 0.2 * s["iteration_ms"] / 1e3:
        reason = (
            f"drafting takes {s['breakdown']['draft'] / (s['iteration_ms'] / 1e3):.0%} of a "
            f"speculative iteration and {t:.2f} accepted tokens per verification do not repay it"
        )
    else:
        reason = f"acceptance α={s['alpha']:.3f} gives only {t:.2f} tokens per verification"
    out["why"] = (
        f"speculation off: the best speculative option (specmoe γ={s['gamma']}, "
        f"N={s['draft_experts']}) is {loss:.0%} slower; {reason}"
    )
    return out


def _brief(c: dict) -> dict[str, Any]:
    return {
        k: c[k] for k in ("policy", "gamma", "draft_experts", "tokens_per_s", "h2d_bytes_per_token")
    }
