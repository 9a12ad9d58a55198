"""Human-readable output: rich tables for the terminal and plotly figures for HTML reports."""
from __future__ import annotations

import html as _html
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from specmoe.app.format import alpha_text, band, calibration_words, provenance_lines, with_interval
from specmoe.app.plan_page import (
    alpha_sentence,
    best_candidate,
    limit_sentences,
    plan_figure,
    write_plan_html,
)
from specmoe.costs.evidence import evidence_for
from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write_text
from specmoe.inputs.hardware import load_system
from specmoe.measure.trace import Trace, read_trace

__all__ = [
    "plan_figure",
    "print_plan",
    "print_prediction",
    "print_slo_plan",
    "write_plan_html",
    "write_report",
]

_console = Console()


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def print_prediction(p: dict[str, Any], console: Console | None = None) -> None:
    console = console or _console
    title = (f"{p['model']} on {p['hardware']} · {p['policy']} · batch {p['batch']} · "
             f"γ={p['gamma']} N={p['draft_experts']}")
    t = Table(title=title, show_header=False)
    rows = [
        ("tokens/s", with_interval(p, "tokens_per_s")),
        ("TPOT (ms)", with_interval(p, "tpot_ms", digits=2)),
        ("TTFT (ms)", with_interval(p, "ttft_ms", digits=2)),
        ("iteration (ms)", p["iteration_ms"]),
        ("tokens per iteration", p["tokens_per_iteration"]),
        ("H2D MB per token", p["h2d_bytes_per_token"] / 1e6),
        ("GPU memory (GB)", f"{p['gpu_memory_gb']:.1f} of {p['gpu_capacity_gb']:g}"),
        ("resident experts / layer", p["resident_experts_per_layer"]),
    ]
    if p.get("gamma"):
        rows.append(("acceptance", alpha_text(p)))
    for k, v in rows:
        t.add_row(k, _fmt(v))
    for k, v in p["breakdown"].items():
        if v:
            t.add_row(f"  time in {k} (ms)", _fmt(v * 1e3, 3))
    console.print(t)
    if not p["fits"]:
        console.print(f"[bold red]does not fit:[/] {p['reason']}")
    for line in provenance_lines(p):
        console.print(f"[dim]{line}[/]")


def print_plan(plan: dict[str, Any], console: Console | None = None) -> None:
    console = console or _console
    b = plan["best"]
    t = Table(title=f"Plan: {plan['model']} on {plan['hardware']}, batch {plan['batch']}")
    for col in ("policy", "γ", "N", "tokens/s", "p10–p90", "TPOT ms", "vs best"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    for name, c in sorted(plan["best_by_policy"].items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        t.add_row(
            name,
            str(c["gamma"]),
            str(c["draft_experts"]),
            _fmt(c["tokens_per_s"], 1),
            band(c, "tokens_per_s"),
            _fmt(c["tpot_ms"]),
            f"{c['tokens_per_s'] / b['tokens_per_s']:.2f}×",
        )
    console.print(t)
    spec = "off" if b["gamma"] == 0 else f"γ={b['gamma']}, N={b['draft_experts']}"
    full = best_candidate(plan)
    console.print(
        f"best: [bold]{b['policy']}[/] ({spec}) → "
        f"{with_interval(full, 'tokens_per_s', 'tokens/s')}, {b['h2d_bytes_per_token'] / 1e6:,.1f} "
        f"MB over PCIe per token, {b['gpu_memory_gb']:.1f} GB GPU memory"
    )
    v = plan.get("verdict") or {}
    if v.get("too_close_to_call"):
        rivals = ", ".join(f"{r['policy']} {band(r, 'tokens_per_s')}" for r in v["overlapping"])
        console.print(f"[bold yellow]too close to call:[/] its p10–p90 band overlaps {rivals}")
        sep = v.get("measure_to_separate") or {}
        if sep.get("input"):
            console.print(f"  to separate them, measure {sep['input']} first: {sep['why']}")
        elif sep:
            console.print(f"  {sep['why']}")
    elif v:
        console.print(
            "clear winner: no other policy's p10–p90 band of tokens/s overlaps the best's"
        )
    for line in limit_sentences(plan):
        console.print(f"  {line}")
    why = ((plan.get("explanation") or {}).get("speculation") or {}).get("why")
    if why:
        console.print(f"  {why[0].upper() + why[1:]}")
    if alpha_sentence(plan, full):
        console.print(f"  {alpha_sentence(plan, full)}")
    for note in plan.get("notes", []):
        console.print(f"[dim]{note}[/]")
    if plan.get("html"):
        console.print(f"page: {plan['html']}")
    for line in provenance_lines({"evidence": plan.get("evidence")}):
        console.print(f"[dim]{line}[/]")


def print_slo_plan(plan: dict[str, Any], console: Console | None = None) -> None:
    """A service-level plan: best configuration per policy, the choice, GPUs and its
    confirmation."""
    console = console or _console
    tg, b = plan["targets"], plan["best"]
    want = ", ".join(
        f"{k} ≤ {v:g}" for k, v in (("TPOT ms", tg["tpot_ms"]), ("TTFT ms", tg["ttft_ms"])) if v
    )
    t = Table(
        title=f"Service-level plan: {plan['model']} on {plan['hardware']}, {want} ({plan['bound']})"
    )
    for col in ("policy", "batch", "γ", "N", "tokens/s", f"TPOT ms ({plan['bound']})",
                f"TTFT ms ({plan['bound']})", "requests/s per GPU"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    for name, c in sorted(plan["best_by_policy"].items(), key=lambda kv: -kv[1][plan["objective"]]):
        t.add_row(
            name,
            str(c["batch"]),
            str(c["gamma"]),
            str(c["draft_experts"]),
            _fmt(c["tokens_per_s"], 1),
            _fmt(c["tpot_ms_bound"], 1),
            _fmt(c["ttft_ms_bound"], 0),
            _fmt(c["requests_per_s"], 3),
        )
    console.print(t)
    spec = "off" if b["gamma"] == 0 else f"γ={b['gamma']}, N={b['draft_experts']}"
    console.print(
        f"best: [bold]{b['policy']}[/] ({spec}) at batch {b['batch']} → {b['tokens_per_s']:,.1f} "
        f"tokens/s, {b['requests_per_s']:.3g} requests/s per GPU "
        f"({plan['feasible']:,} of {plan['searched']:,} configurations meet the targets)"
    )
    if plan.get("replicas") is not None:
        console.print(f"GPUs for {tg['rate_rps']:g} requests/s: [bold]{plan['replicas']}[/] "
                      f"(ceil({tg['rate_rps']:g} / {b['requests_per_s']:.3g}))")
    rounds = plan.get("rounds", [])
    for i, r in enumerate(rounds[:-1] if len(rounds) > 1 else []):
        console.print(
            f"round {i + 1}: {r['policy']} batch {r['batch']} missed in the simulator; targets "
            f"tightened to TPOT {_fmt(rounds[i + 1]['targets_used']['tpot_ms'])} ms, "
            f"TTFT {_fmt(rounds[i + 1]['targets_used']['ttft_ms'], 0)} ms"
        )
    _print_confirmation(plan.get("confirmation"), console)
    for note in plan.get("notes", []):
        console.print(f"[dim]{note}[/]")


def _print_confirmation(c: dict | None, console: Console) -> None:
    if not c:
        return
    if not c["ran"]:
        console.print(f"[dim]not confirmed: {c['why']}[/]")
        return
    verdict = "[green]meets the targets[/]" if c["meets"] else "[bold red]misses the targets[/]"
    if c["mode"] == "offline":
        console.print(
            f"simulator (offline): TPOT {c['tpot_ms']:,.1f} ms, "
            f"TTFT {c['ttft_ms']:,.0f} ms → {verdict}"
        )
        return
    for tr in c["tries"]:
        console.print(
            f"simulator (serving, {c['requests']} requests, first {c['warmup']} not counted): "
            f"{tr['replicas']} GPU(s) at {tr['rate_per_replica_rps']:.3g} requests/s each → "
            f"TPOT p90 {tr['tpot_ms_p90']:,.1f} ms, TTFT p90 {tr['ttft_ms_p90']:,.0f} ms, "
            f"load {_fmt(tr['load'])}"
        )
    console.print(f"  {verdict}" + (f" with {c['replicas']} GPU(s)" if c["meets"] else
                                      f" up to {c['tries'][-1]['replicas']} GPU(s)"))


# ---- sweep reports: HTML with plotly figures ---------------------------------------------------

# The study `specmoe report` runs when given no results
# (experiments/grids/default.yaml holds the same).
DEFAULT_STUDY: dict[str, Any] = {
    "name": "default-study",
    "engine": "analytic",
    "axes": {
        "model": ["mixtral-8x7b", "nllb-moe-54b"],
        "hardware": ["h100-pcie"],
        "policy": ["ondemand", "overlap", "caching", "cpu", "specmoe"],
        "batch": {"start": 1, "stop": 512, "factor": 2},
        "gamma": {"start": 0, "stop": 12, "step": 1},
        "draft_experts": [1, 2, 4, 8],
        "alpha": ["model"],   # each model's own default (published figure or stated prior)
    },
}
MAX_PAIRS = 6
# Columns a results file needs for a report (the output of `specmoe sweep` has them all).
REQUIRED_COLUMNS = (
    "engine",
    "model",
    "hardware",
    "policy",
    "batch",
    "gamma",
    "draft_experts",
    "acceptance",
    "routing",
    "prompt_len",
    "output_len",
    "fits",
    "tokens_per_s",
    "h2d_bytes_per_token",
    "gpu_memory_gb",
)


def _rows(table: dict, **eq) -> np.ndarray:
    """Indices of rows that fit in memory and match every column == value."""
    mask = np.asarray(table["fits"], dtype=bool) & np.isfinite(
        np.asarray(table["tokens_per_s"], dtype=float)
    )
    for k, v in eq.items():
        mask &= table[k] == v
    return np.flatnonzero(mask)


def best_rows(table: dict, idx: np.ndarray, by: tuple[str, ...]) -> dict[tuple, int]:
    """For each distinct value of the `by` columns among rows idx: the row with the most
    tokens/s."""
    out: dict[tuple, int] = {}
    tps = table["tokens_per_s"]
    for i in idx:
        key = tuple(table[k][i].item() if hasattr(table[k][i], "item") else table[k][i] for k in by)
        if key not in out or tps[i] > tps[out[key]]:
            out[key] = int(i)
    return out


def _slice(table: dict, model: str, hardware: str) -> tuple[np.ndarray, list[str]]:
    """Rows of one model × hardware at the first routing/lengths/acceptance, and notes on what was
    fixed."""
    idx = _rows(table, model=model, hardware=hardware)
    notes = []
    for k in ("routing", "prompt_len", "output_len"):
        vals = list(dict.fromkeys(table[k][idx].tolist()))
        if len(vals) > 1:
            notes.append(f"{k} = {vals[0]} (of {vals})")
            idx = idx[table[k][idx] == vals[0]]
    return idx, notes


def _acceptances(table: dict, idx: np.ndarray) -> list[str]:
    return [a for a in dict.fromkeys(table["acceptance"][idx].tolist()) if a != ""]


def _policy_best(table: dict, idx: np.ndarray, acc: str | None) -> dict[str, dict[int, int]]:
    """policy → {batch → best row}; speculative rows limited to acceptance `acc`."""
    out: dict[str, dict[int, int]] = {}
    for pol in dict.fromkeys(table["policy"][idx].tolist()):
        sel = idx[table["policy"][idx] == pol]
        if acc is not None and (table["acceptance"][sel] != "").any():
            sel = sel[table["acceptance"][sel] == acc]
        out[pol] = {k[0]: i for k, i in sorted(best_rows(table, sel, ("batch",)).items())}
    return out


# fixed per policy, so a line lying on another (ondemand under overlap) stays visible
POLICY_STYLE = {
    "ondemand": {"dash": "dot", "width": 4}, "overlap": {"dash": "solid", "width": 2},
    "caching": {"dash": "solid", "width": 2}, "cpu": {"dash": "dashdot", "width": 2},
    "specmoe": {"dash": "solid", "width": 3},
}
MARKERS = {"ondemand": "circle-open", "overlap": "x", "caching": "square", "cpu": "diamond",
           "specmoe": "circle"}


def acceptance_label(acc: str) -> str:
    """Plain words for an acceptance column value: 'paper' is the SpecMoE paper's published
    table."""
    return "published acceptance" if acc == "paper" else f"α={acc}"


def throughput_vs_batch(table: dict, model: str, hardware: str):
    """Tokens/s against batch (both axes log), one line per policy at its best γ and N
    (dashed: further acceptances)."""
    import plotly.graph_objects as go

    idx, notes = _slice(table, model, hardware)
    fig = go.Figure()
    accs = _acceptances(table, idx) or [None]
    for j, acc in enumerate(accs):
        for pol, rows in _policy_best(table, idx, acc).items():
            if j and not (table["acceptance"][list(rows.values())] != "").any():
                continue     # a policy without acceptance is drawn once
            rows_l = list(rows.values())
            spec = (table["acceptance"][rows_l] != "").any()
            label = f"{pol} {acceptance_label(acc)}" if spec and len(accs) > 1 else pol
            style = dict(POLICY_STYLE.get(pol, {}))
            if j:
                style["dash"] = "dash"
            fig.add_trace(
                go.Scatter(
                    x=list(rows),
                    y=table["tokens_per_s"][rows_l],
                    mode="lines+markers",
                    name=label,
                    line=style,
                    marker={"symbol": MARKERS.get(pol, "circle"), "size": 8},
                    customdata=np.stack(
                        [table["gamma"][rows_l], table["draft_experts"][rows_l]], axis=1
                    ),
                    hovertemplate=f"{label}, batch %{{x}}: %{{y:,.1f}} tokens/s "
                    "(γ=%{customdata[0]}, N=%{customdata[1]})<extra></extra>",
                )
            )
    notes += _coinciding(fig)
    _layout(
        fig,
        f"Throughput against batch: {model} on {hardware}",
        "batch (sequences decoded together)",
        "tokens/s (log scale)",
        notes,
        logx=True,
        logy=True,
    )
    return fig


def _coinciding(fig, tol: float = 0.05) -> list[str]:
    """Notes for lines that lie within tol of another line at two or more shared points (there one
    line hides the other): 'caching and cpu coincide at batch 1-64'."""
    out, data = [], list(fig.data)
    for a in range(len(data)):
        for b in range(a + 1, len(data)):
            pa = dict(zip(list(data[a].x), np.asarray(data[a].y, dtype=float)))
            pb = dict(zip(list(data[b].x), np.asarray(data[b].y, dtype=float)))
            same = [x for x in pa if x in pb and np.isclose(pa[x], pb[x], rtol=tol)]
            if len(same) == len(pa) == len(pb):
                out.append(f"{data[a].name} and {data[b].name} lie within {tol:.0%} of each other")
            elif len(same) >= 2:
                out.append(
                    f"{data[a].name} and {data[b].name} coincide at batch "
                    f"{min(same):g}-{max(same):g}"
                )
    return out


def gamma_curves(table: dict, model: str, hardware: str, policy: str = "specmoe", batches: int = 4):
    """Speed-up from speculation against γ (best N at each), one line per batch size, at the first
    acceptance: tokens/s over the same batch's γ=0 value, so every batch shares one scale."""
    import plotly.graph_objects as go

    idx, notes = _slice(table, model, hardware)
    idx = idx[table["policy"][idx] == policy]
    fig = go.Figure()
    accs = _acceptances(table, idx)
    if accs:
        idx = idx[table["acceptance"][idx] == accs[0]]
        notes.append(acceptance_label(accs[0]))
    all_b = sorted(set(table["batch"][idx].tolist()))
    pick = (
        sorted({all_b[round(i)] for i in np.linspace(0, len(all_b) - 1, min(batches, len(all_b)))})
        if all_b
        else []
    )
    normalised = False
    for b in pick:
        rows = best_rows(table, idx[table["batch"][idx] == b], ("gamma",))
        gs = sorted(rows)
        r = [rows[g] for g in gs]
        tps = np.asarray(table["tokens_per_s"][r], dtype=float)
        base = tps[0] if gs and gs[0][0] == 0 and tps[0] > 0 else None
        normalised |= base is not None
        y = tps / base if base is not None else tps
        fig.add_trace(go.Scatter(
            x=[g[0] for g in gs], y=y, mode="lines+markers", name=f"batch {b}",
            customdata=np.stack([table["draft_experts"][r], tps], axis=1),
            hovertemplate=f"batch {b}, γ=%{{x}}: %{{customdata[1]:,.1f}} tokens/s "
                          "(N=%{customdata[0]})<extra></extra>"))
    if normalised:
        fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    ytitle = "speed-up over no speculation (γ=0), same batch" if normalised else "tokens/s"
    _layout(
        fig,
        f"{policy}: speed-up from speculation against draft length γ ({model} on {hardware})",
        "draft length γ (0 = no speculation)",
        ytitle,
        notes,
    )
    return fig


def bytes_per_token(table: dict, model: str, hardware: str):
    """PCIe bytes per generated token against batch, per policy at its best configuration."""
    import plotly.graph_objects as go

    idx, notes = _slice(table, model, hardware)
    accs = _acceptances(table, idx)
    fig = go.Figure()
    for pol, rows in _policy_best(table, idx, accs[0] if accs else None).items():
        r = list(rows.values())
        fig.add_trace(
            go.Scatter(
                x=list(rows),
                y=table["h2d_bytes_per_token"][r] / 1e6,
                mode="lines+markers",
                name=pol,
                line=POLICY_STYLE.get(pol, {}),
                marker={"symbol": MARKERS.get(pol, "circle"), "size": 8},
                hovertemplate=f"{pol}, batch %{{x}}: %{{y:,.2f}} MB per token<extra></extra>",
            )
        )
    notes += _coinciding(fig)
    _layout(
        fig,
        f"Host→GPU bytes per generated token: {model} on {hardware}",
        "batch (sequences decoded together)",
        "MB per token",
        notes,
        logx=True,
    )
    return fig


CATEGORY_WORDS = {
    "gemm": "matrix multiply",
    "moe": "MoE layer",
    "expert": "expert on GPU",
    "attn": "attention",
    "norm": "norm",
    "gate": "router",
    "rope": "rotary embedding",
    "embed": "embedding",
    "lm_head": "output head",
    "sample": "sampling",
    "h2d": "copy host→GPU",
    "d2h": "copy GPU→host",
    "cpu_expert": "expert on CPU",
    "ssd": "SSD read",
    "draft_step": "draft step",
    "verify": "verification",
    "accept": "acceptance",
    "iteration": "iteration",
    "prefill": "prefill",
    "launch": "kernel launch",
    "other": "other",
}


def timeline(trace, max_events: int = 4000, window_ms: tuple[float, float] | None = None):
    """Gantt view of a specmoe.trace/1 file (or Trace): one row per stream, one colour per category.

    window_ms: (start, end) in ms of the trace to draw; default from the first event until
    max_events are shown. The title says which window, of how long a trace, is drawn.
    """
    import plotly.graph_objects as go

    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    events = sorted(tr.events, key=lambda e: e["ts_us"])
    if window_ms is not None:
        lo, hi = window_ms[0] * 1e3, window_ms[1] * 1e3
        events_in = [e for e in events if e["ts_us"] + e["dur_us"] >= lo and e["ts_us"] <= hi]
    else:
        events_in = events
    shown = events_in[:max_events]
    fig = go.Figure()
    for cat in dict.fromkeys(e["cat"] for e in shown):
        evs = [e for e in shown if e["cat"] == cat]
        fig.add_trace(
            go.Bar(
                base=[e["ts_us"] / 1e3 for e in evs],
                x=[max(e["dur_us"], 0.0) / 1e3 for e in evs],
                y=[str(e.get("stream", "main")) for e in evs],
                orientation="h",
                name=f"{cat}: {CATEGORY_WORDS.get(cat, cat)}",
                text=[e["name"] for e in evs],
                textposition="none",
                marker={"line": {"width": 0}},
                hovertemplate="%{y} · %{text}: starts %{base:.3f} ms, "
                              "lasts %{x:.3f} ms<extra></extra>",
            )
        )
    end_ms = max((e["ts_us"] + e["dur_us"] for e in events), default=0.0) / 1e3
    note = []
    if shown:
        a, b = shown[0]["ts_us"] / 1e3, max(e["ts_us"] + e["dur_us"] for e in shown) / 1e3
        note.append(
            f"{a:,.2f}-{b:,.2f} ms of a {end_ms:,.2f} ms trace: {len(shown):,} of "
            f"{len(events):,} events"
            + (
                ""
                if len(shown) == len(events)
                else "; pick another window with `specmoe report --trace-window START:END` (ms)"
            )
        )
    else:
        note.append(f"no events in this window (the trace spans 0-{end_ms:,.2f} ms)")
    src = {"sim": "simulator", "engine": "engine"}.get(
        tr.header.get("source"), tr.header.get("source", "?")
    )
    pol = (
        (tr.header.get("policy") or {}).get("name", "")
        if isinstance(tr.header.get("policy"), dict)
        else ""
    )
    _layout(fig, f"Timeline of a {src} trace: {tr.header.get('model', '')} {pol}".rstrip(),
            "time since the trace began (ms)", "stream", note)
    cats = len({e["cat"] for e in shown})
    rows = len({str(e.get("stream", "main")) for e in shown})
    fig.update_layout(barmode="overlay", legend={"title": {"text": "kind of work"}},
                      height=max(460, 220 + 60 * rows, 200 + 24 * cats))
    fig.update_xaxes(rangeslider={"visible": True})
    return fig


def _layout(
    fig, title: str, x: str, y: str, notes: list[str], logx: bool = False, logy: bool = False
) -> None:
    sub = f"<br><sup>{'; '.join(notes)}</sup>" if notes else ""
    fig.update_layout(title=title + sub, xaxis_title=x, yaxis_title=y, template="plotly_white")
    if logx:   # label the batches drawn, not log-axis minor digits
        xs = sorted({float(v) for tr in fig.data for v in (tr.x if tr.x is not None else ())})
        fig.update_xaxes(type="log", tickvals=xs or None, ticktext=[f"{v:g}" for v in xs] or None)
    if logy:   # one label per power of ten
        fig.update_yaxes(type="log", dtick=1)


def summary_rows(table: dict) -> list[dict[str, Any]]:
    """Best configuration per model × hardware × batch (first routing/lengths/acceptance); a batch
    where nothing fits in GPU memory gets a row saying so (policy None) rather than no row."""
    out = []
    for model, hardware in _pairs(table):
        idx, _ = _slice(table, model, hardware)
        accs = _acceptances(table, idx)
        if accs:
            idx = idx[(table["acceptance"][idx] == accs[0]) | (table["acceptance"][idx] == "")]
        best = {b: i for (b,), i in best_rows(table, idx, ("batch",)).items()}
        pair = (table["model"] == model) & (table["hardware"] == hardware)
        for b in sorted(set(table["batch"][pair].tolist())):
            if b not in best:
                need = np.asarray(table["gpu_memory_gb"][pair & (table["batch"] == b)], dtype=float)
                out.append({"model": model, "hardware": hardware, "batch": b, "policy": None,
                            "min_gpu_memory_gb": float(np.nanmin(need)) if need.size else None})
                continue
            i = best[b]
            out.append(
                {
                    "model": model,
                    "hardware": hardware,
                    "batch": b,
                    "policy": table["policy"][i],
                    "gamma": int(table["gamma"][i]),
                    "draft_experts": int(table["draft_experts"][i]),
                    "tokens_per_s": float(table["tokens_per_s"][i]),
                    "h2d_mb_per_token": float(table["h2d_bytes_per_token"][i]) / 1e6,
                }
            )
    return out


def _pairs(table: dict) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table["model"].tolist(), table["hardware"].tolist())))


def export_png(figures: dict[str, Any], directory) -> tuple[list[str], str]:
    """Write each figure as PNG (kaleido); returns (paths, '') or ([], why it could not)."""

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return [], "PNG export skipped: kaleido is not installed (pip install kaleido)"
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = d / f"{name}.png"
        try:
            fig.write_image(str(path), width=1000, height=560, scale=2)
        except Exception as exc:  # noqa: BLE001 - kaleido fails in many ways (no Chrome, sandbox): report, don't crash
            first = next(
                (ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__
            )
            return paths, f"PNG export skipped: {first}"
        paths.append(str(path))
    return paths, ""


def report_figures(
    table: dict, trace=None, trace_window_ms: tuple[float, float] | None = None
) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    for i, (model, hardware) in enumerate(_pairs(table)[:MAX_PAIRS]):
        tag = f"{i}-{model}-{hardware}"
        figs[f"throughput-{tag}"] = throughput_vs_batch(table, model, hardware)
        if (table["policy"] == "specmoe").any():
            figs[f"gamma-{tag}"] = gamma_curves(table, model, hardware)
        figs[f"bytes-{tag}"] = bytes_per_token(table, model, hardware)
    if trace is not None:
        figs["timeline"] = timeline(trace, window_ms=trace_window_ms)
    return figs


FIGURE_WORDS = {
    "throughput": "Tokens per second each policy reaches at each batch size, at its best draft "
                  "length γ and draft experts N (hover for them). Both axes are logarithmic, so "
                  "small batches stay readable.",
    "gamma": "How much speculation speeds specmoe up at each draft length γ, relative to the same "
             "batch without speculation (1 = no gain, below 1 = speculation costs). Hover for "
             "tokens/s.",
    "bytes": "Expert weights copied from host memory to the GPU per generated token: what "
             "speculation and caching try to reduce.",
    "timeline": "What ran when in one trace: one row per stream, one colour per kind of work. Drag "
                "the slider under the chart, or zoom, to look closer.",
}
PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.45}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    ".caveat{background:#fff6e0;border-left:5px solid #c08a00;padding:6px 14px;margin:12px 0}"
    "td.nofit{color:#a00;text-align:left}"
)


def calibration_notes(table: dict) -> list[str]:
    """One sentence per hardware profile in the table: calibrated (fitted to traces) or not."""
    out = []
    for name in dict.fromkeys(table["hardware"].tolist()):
        try:
            ev = evidence_for(load_system(name))
        except SpecMoEError:
            out.append(
                f"Hardware {name}: profile not found here, so whether it is calibrated is unknown."
            )
            continue
        out.append(calibration_words(ev.calibrated, name, ev.gpu))
    return out


def acceptance_notes(table: dict) -> list[str]:
    accs = [a for a in dict.fromkeys(table["acceptance"].tolist()) if a]
    if "paper" in accs:
        return [
            (
                "Speculative configurations use the 'published acceptance': the draft acceptance "
                "rates the SpecMoE paper reports for NLLB-MoE, not rates measured on these models."
            )
        ]
    return []


def write_report(table: dict, out, trace=None, png_dir=None, title: str = "specmoe report",
                 plotlyjs: str | bool = True, notes: list[str] | None = None,
                 trace_window_ms: tuple[float, float] | None = None) -> dict[str, Any]:
    """An HTML page with every figure, what each shows, and a table of the best configuration per
    batch.

    plotlyjs: True embeds plotly.js (opens offline, ~4.6 MB), 'cdn' links it (small file).
    trace_window_ms: (start, end) of the trace timeline, in ms.
    Returns {html, figures, png, png_note}.
    """
    figs = report_figures(table, trace, trace_window_ms)
    notes = list(notes or [])
    pairs = _pairs(table)
    if len(pairs) > MAX_PAIRS:
        notes.append(f"figures for the first {MAX_PAIRS} of {len(pairs)} model × hardware pairs")
    png, png_note = export_png(figs, png_dir) if png_dir else ([], "")
    if png_note:
        notes.append(png_note)
    esc = _html.escape
    engines = ", ".join(sorted(set(table["engine"].tolist())))
    parts = [
        f"<h1>{esc(title)}</h1>",
        (
            f"<p>{len(table['batch']):,} configurations predicted by the {esc(engines)} model. "
            "Figures show only configurations that fit in GPU memory.</p>"
        ),
    ]
    parts += [
        f"<div class='caveat'>{esc(n)}</div>"
        for n in calibration_notes(table) + acceptance_notes(table)
    ]
    parts += [f"<p><em>{esc(n)}</em></p>" for n in notes]
    for j, (name, fig) in enumerate(figs.items()):
        words = FIGURE_WORDS.get(name.split("-")[0], "")
        parts.append(f"<p>{esc(words)}</p>" if words else "")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotlyjs if j == 0 else False))
    parts.append(_summary_html(summary_rows(table)))
    atomic_write_text(
        out,
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        + esc(title)
        + f"</title><style>{PAGE_STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>",
    )
    return {"html": str(out), "figures": list(figs), "png": png, "png_note": png_note}


def _summary_html(rows: list[dict[str, Any]]) -> str:
    head = ("model", "hardware", "batch", "policy", "γ", "N", "tokens/s", "MB/token over PCIe")
    body = []
    for r in rows:
        cells = (r["model"], r["hardware"], r["batch"])
        lead = "".join(f"<td>{_html.escape(str(v))}</td>" for v in cells)
        if r["policy"] is None:
            need = r.get("min_gpu_memory_gb")
            why = "does not fit in GPU memory with any policy" + (
                f" (needs at least {need:,.1f} GB)"
                if need is not None and np.isfinite(need)
                else ""
            )
            body.append(f"<tr>{lead}<td class='nofit' colspan='5'>{why}</td></tr>")
            continue
        vals = (
            r["policy"],
            r["gamma"],
            r["draft_experts"],
            f"{r['tokens_per_s']:,.1f}",
            f"{r['h2d_mb_per_token']:,.2f}",
        )
        body.append(
            f"<tr>{lead}" + "".join(f"<td>{_html.escape(str(v))}</td>" for v in vals) + "</tr>"
        )
    return ("<h2>Best configuration per batch</h2><p>γ = draft tokens per verification (0 = no "
            "speculation), N = draft experts kept on the GPU per layer.</p><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>")
