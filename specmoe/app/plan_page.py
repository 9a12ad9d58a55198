"""The page `specmoe plan --html` writes: the recommendation in words, then the figure behind it.

Words first (what to run, how fast, how sure, why speculation is on or off, what the numbers rest
on), then tokens/s against γ with the chosen point marked, then every policy's best.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from specmoe.app.format import (
    acceptance_words,
    band,
    calibration_words,
    interval,
    number,
    provenance_lines,
    with_interval,
)
from specmoe.fileio import atomic_write_text
from specmoe.inputs.policies import POLICIES

REFERENCE_DASH = ("dot", "dash", "dashdot", "longdash", "longdashdot")
PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.45}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}"
    ".rec{background:#eef6ee;border-left:5px solid #2a7a2a;padding:8px 14px;margin:12px 0}"
    ".caveat{background:#fff6e0;border-left:5px solid #c08a00;padding:6px 14px;margin:12px 0}"
    "figure{margin:0}"
)


def best_candidate(plan: dict[str, Any]) -> dict[str, Any]:
    """The full candidate dict of the plan's choice (it carries intervals and sources when they
    exist)."""
    b = plan["best"]
    for c in plan.get("candidates", []):
        if (c["policy"], c["gamma"], c["draft_experts"]) == (
            b["policy"],
            b["gamma"],
            b["draft_experts"],
        ):
            return {**c, **b}
    return dict(b)


def configuration_words(c: dict[str, Any]) -> str:
    """'specmoe (what it does) with γ=4 draft tokens and N=2 draft experts', or '... without
    speculation'."""
    what = POLICIES.get(c["policy"], "")
    name = f"{c['policy']} ({what})" if what else c["policy"]
    if c["gamma"]:
        return (
            f"{name} with γ={c['gamma']} draft tokens and N={c['draft_experts']} draft experts "
            "per layer"
        )
    return f"{name}, without speculation"


PART_WORDS = {
    "attention": "attention",
    "dense": "dense layers",
    "expert_compute": "experts on the GPU",
    "h2d": "copying experts over PCIe",
    "cpu_expert": "experts on the host CPU",
    "draft": "drafting",
}
LIMIT_WORDS = {"pcie": "PCIe bandwidth", "hbm": "GPU memory bandwidth", "compute": "GPU compute",
               "host_cpu": "host CPU", "acceptance": "rejected drafts"}


def limit_sentences(plan: dict[str, Any]) -> list[str]:
    """Where the chosen configuration's time goes and what would speed it up, in words."""
    ex = plan.get("explanation") or {}
    out = []
    shares = sorted((ex.get("time_shares") or {}).items(), key=lambda kv: -kv[1])
    if shares:
        out.append("Time per decoding step: " + ", ".join(
            f"{PART_WORDS.get(k, k)} {v:.0%}" for k, v in shares if v >= 0.005) + ".")
    sens = ex.get("sensitivity") or {}
    if sens:
        lim = ex.get("limited_by")
        what = {
            k: (
                "halving the rejected drafts"
                if k == "acceptance"
                else f"twice the {LIMIT_WORDS.get(k, k)}"
            )
            for k in sens
        }
        if lim == "balanced":   # no single doubling gains `balanced_below` (planning.explain)
            pair = ex.get("pair_sensitivity")
            both = ""
            if pair:
                resources = pair["resources"]
                doubled = " and ".join(f"twice the {LIMIT_WORDS.get(k, k)}" for k in resources)
                both = f"; {doubled} together: {pair['speedup']:.2f}×"
            below = ex.get("balanced_below", 1.15)
            gains = ", ".join(f"{what[k]}: {v:.2f}×" for k, v in sens.items())
            out.append(
                f"Balanced: no single resource would make it {below:.2f}× as fast ({gains}{both})."
            )
        else:
            others = ", ".join(f"{what[k]}: {v:.2f}×" for k, v in sens.items() if k != lim)
            out.append(
                f"Limited by {LIMIT_WORDS.get(lim, lim)}: {what[lim]} would make it "
                f"{sens[lim]:.2f}× as fast ({others})."
            )
    return out


def recommendation(plan: dict[str, Any]) -> list[str]:
    """Plain sentences: what to run, how fast, how sure, why. Shared by the page and its tests."""
    c = best_candidate(plan)
    sim = c.get("sim_tokens_per_s")
    lines = [
        f"Serve {plan['model']} on {plan['hardware']} at batch {plan['batch']} with "
        f"{configuration_words(c)}: {with_interval(c, 'tokens_per_s', 'tokens/s')}"
        + (
            f" (analytic; the simulator measured {number(sim)} tokens/s)"
            if sim is not None
            else " (analytic)"
        )
        + f", {with_interval(c, 'tpot_ms', 'ms', 2)} per output token, "
        f"{number(c['h2d_bytes_per_token'] / 1e6)} MB over PCIe per token, "
        f"{number(c['gpu_memory_gb'])} GB of GPU memory."
    ]
    spec = (plan.get("explanation") or {}).get("speculation") or {}
    if spec.get("why"):
        lines.append(spec["why"][0].upper() + spec["why"][1:] + ".")
    v = plan.get("verdict") or {}
    if v.get("too_close_to_call"):
        rivals = ", ".join(
            f"{r['policy']} ({band(r, 'tokens_per_s')} tokens/s)" for r in v["overlapping"]
        )
        sep = (v.get("measure_to_separate") or {}).get("why", "")
        lines.append(f"Too close to call: the p10-p90 band overlaps {rivals}. {sep}".strip())
    elif v:
        lines.append(
            "Clear winner: no other policy's p10-p90 band of tokens/s overlaps this one's."
        )
    if interval(c, "tokens_per_s") is None:
        lines.append(
            "No interval: this prediction carries no uncertainty estimate, so treat it as a "
            "point estimate (see README, 'How far to trust a number')."
        )
    return lines


def plan_figure(plan: dict[str, Any], max_lines: int = 8):
    """Tokens/s against γ, one line per draft-expert count N (the best few), every other policy as a
    labelled reference line in the legend, and the chosen configuration marked with a star."""
    import plotly.graph_objects as go

    fig = go.Figure()
    spec = [c for c in plan["candidates"] if c["policy"] == "specmoe" and c["fits"]]
    gammas = sorted({c["gamma"] for c in plan["candidates"] if c["policy"] == "specmoe"}) or [0]
    peak: dict[int, float] = {}
    for c in spec:
        peak[c["draft_experts"]] = max(peak.get(c["draft_experts"], 0.0), c["tokens_per_s"])
    for n in sorted(sorted(peak, key=lambda k: -peak[k])[:max_lines]):
        pts = sorted((c for c in spec if c["draft_experts"] == n), key=lambda c: c["gamma"])
        ivs = [interval(c, "tokens_per_s") for c in pts]
        err = None
        if all(iv is not None for iv in ivs):
            err = {"type": "data", "symmetric": False,
                   "array": [iv[1] - c["tokens_per_s"] for iv, c in zip(ivs, pts)],
                   "arrayminus": [c["tokens_per_s"] - iv[0] for iv, c in zip(ivs, pts)]}
        fig.add_trace(go.Scatter(
            x=[c["gamma"] for c in pts], y=[c["tokens_per_s"] for c in pts], mode="lines+markers",
            name=f"specmoe N={n}", error_y=err,
            hovertemplate=f"specmoe N={n}, γ=%{{x}}: %{{y:,.1f}} tokens/s<extra></extra>"))
    lo, hi = min(gammas), max(gammas)
    others = sorted(((k, v) for k, v in plan["best_by_policy"].items() if k != "specmoe"),
                    key=lambda kv: -kv[1]["tokens_per_s"])
    for j, (name, c) in enumerate(others):
        fig.add_trace(go.Scatter(
            x=[lo, hi], y=[c["tokens_per_s"]] * 2, mode="lines", name=f"{name} (no speculation)",
            line={"dash": REFERENCE_DASH[j % len(REFERENCE_DASH)], "width": 2},
            hovertemplate=f"{name}: %{{y:,.1f}} tokens/s<extra></extra>"))
    b = plan["best"]
    fig.add_trace(
        go.Scatter(
            x=[b["gamma"]],
            y=[b["tokens_per_s"]],
            mode="markers+text",
            name="recommended",
            marker={
                "symbol": "star",
                "size": 18,
                "color": "gold",
                "line": {"color": "black", "width": 1},
            },
            text=[
                f"best: {b['policy']}"
                + (f" γ={b['gamma']} N={b['draft_experts']}" if b["gamma"] else "")
            ],
            # the label sits on the side with room: left of a star at the right end of the axis
            textposition="top left" if b["gamma"] >= (lo + hi) / 2 else "top right",
            hovertemplate="recommended: %{y:,.1f} tokens/s<extra></extra>",
        )
    )
    ys = [c["tokens_per_s"] for c in spec] + [c["tokens_per_s"] for _, c in others]
    log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 8
    fig.update_layout(
        title=f"Tokens/s against draft length γ: {plan['model']} on {plan['hardware']}, "
              f"batch {plan['batch']}",
        xaxis_title="draft length γ (0 = no speculation; "
                    "the N draft experts then serve as resident experts)",
        yaxis_title="tokens/s" + (" (log scale)" if log_y else ""),
        template="plotly_white",
        legend={"title": {"text": "configuration"}},
        height=560,
    )
    if log_y:
        # labels at 1, 2, 5 of each decade, not every digit
        fig.update_yaxes(type="log", dtick="D2")
    # no γ = -1 tick
    fig.update_xaxes(dtick=1 if hi - lo <= 16 else None, range=[lo - 0.5, hi + 0.5])
    return fig


def _policy_table(plan: dict[str, Any]) -> str:
    best = plan["best"]["tokens_per_s"]
    rows = sorted(plan["best_by_policy"].items(), key=lambda kv: -kv[1]["tokens_per_s"])
    head = (
        "<tr><th>policy</th><th>γ</th><th>N</th><th>tokens/s</th><th>ms per token</th>"
        "<th>vs best</th></tr>"
    )
    body = "".join(
        f"<tr><td>{html.escape(k)}{' ★' if k == plan['best']['policy'] else ''}</td>"
        f"<td>{c['gamma']}</td><td>{c['draft_experts']}</td>"
        f"<td>{number(c['tokens_per_s'])}</td><td>{number(c['tpot_ms'], 2)}</td>"
        f"<td>{c['tokens_per_s'] / best:.2f}×</td></tr>"
        for k, c in rows
    )
    return f"<h2>Best configuration of each policy</h2><table>{head}{body}</table>"


def alpha_sentence(plan: dict[str, Any], c: dict[str, Any]) -> str:
    """α of the chosen configuration, or of the best speculative candidate when speculation is
    off."""
    spec = (
        c
        if c["gamma"]
        else max(
            (x for x in plan.get("candidates", []) if x["gamma"] and x["fits"]),
            key=lambda x: x["tokens_per_s"],
            default=None,
        )
    )
    if spec is None or spec.get("alpha") is None:
        return ""
    which = "" if spec is c else f" (for the best speculative option, N={spec['draft_experts']})"
    return (f"Acceptance α = {spec['alpha']:.3f} per draft token{which}: "
            f"{acceptance_words(spec.get('acceptance_source'))}.")


def plan_html(plan: dict[str, Any], plotlyjs: str | bool = True) -> str:
    """The whole page as one HTML string."""
    c = best_candidate(plan)
    esc = html.escape
    rec = "".join(f"<p>{esc(line)}</p>" for line in recommendation(plan))
    expl = limit_sentences(plan)
    basis = [
        alpha_sentence(plan, c),
        (
            f"Workload: {c.get('prompt_len', '?')} prompt tokens and {c.get('output_len', '?')} "
            f"output tokens per sequence, {c.get('routing', 'uniform')} expert routing."
        ),
        "How it was predicted: "
        + ("; ".join(plan.get("notes", [])) or plan.get("engine", "analytic"))
        + ".",
        *provenance_lines(c),
    ]
    caveat = calibration_words(bool(plan.get("calibrated")), plan["hardware"],
                               (plan.get("evidence") or {}).get("gpu_parameters", ""))
    parts = [
        f"<h1>Plan: {esc(plan['model'])} on {esc(plan['hardware'])}, batch {plan['batch']}</h1>",
        f"<div class='rec'><h2>Recommendation</h2>{rec}</div>",
        f"<div class='caveat'>{esc(caveat)}</div>",
        "<h2>What limits it</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in expl) + "</ul>",
        "<h2>What the numbers rest on</h2><ul>"
        + "".join(f"<li>{esc(x)}</li>" for x in basis if x)
        + "</ul>",
        "<h2>Throughput against draft length</h2>",
        (
            "<p>Each line is specmoe with N draft experts resident per layer; the other policies "
            "do not speculate and appear as flat lines. The star marks the recommendation. At γ = "
            "0 nothing is drafted, but the N draft experts still sit on the GPU and serve as "
            "resident experts, so the γ = 0 value rises with N. Hover for values.</p>"
        ),
        "<figure>"
        + plan_figure(plan).to_html(full_html=False, include_plotlyjs=plotlyjs)
        + "</figure>",
        _policy_table(plan),
    ]
    title = f"specmoe plan: {plan['model']} on {plan['hardware']}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>")


def write_plan_html(plan: dict[str, Any], path: str | Path, plotlyjs: str | bool = True) -> Path:
    """Write the plan page (atomically; plotly.js embedded so it opens offline)."""
    return atomic_write_text(path, plan_html(plan, plotlyjs))
