"""Human-readable output: rich tables for the terminal and plotly figures for HTML reports."""
from __future__ import annotations

import html as _html
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from specmoe.measure.trace import Trace, read_trace

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
    rows = [("tokens/s", p["tokens_per_s"]), ("TPOT (ms)", p["tpot_ms"]), ("TTFT (ms)", p["ttft_ms"]),
            ("iteration (ms)", p["iteration_ms"]), ("tokens per iteration", p["tokens_per_iteration"]),
            ("H2D MB per token", p["h2d_bytes_per_token"] / 1e6),
            ("GPU memory (GB)", f"{p['gpu_memory_gb']:.1f} of {p['gpu_capacity_gb']:g}"),
            ("resident experts / layer", p["resident_experts_per_layer"])]
    for k, v in rows:
        t.add_row(k, _fmt(v))
    for k, v in p["breakdown"].items():
        if v:
            t.add_row(f"  time in {k} (ms)", _fmt(v * 1e3, 3))
    console.print(t)
    if not p["fits"]:
        console.print(f"[bold red]does not fit:[/] {p['reason']}")
    if not p.get("calibrated"):
        console.print("[dim]uncalibrated profile: ideal roofline efficiencies (an upper bound on speed)[/]")


def print_plan(plan: dict[str, Any], console: Console | None = None) -> None:
    console = console or _console
    b = plan["best"]
    t = Table(title=f"Plan: {plan['model']} on {plan['hardware']}, batch {plan['batch']}")
    for col in ("policy", "γ", "N", "tokens/s", "TPOT ms", "vs best"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    for name, c in sorted(plan["best_by_policy"].items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        t.add_row(name, str(c["gamma"]), str(c["draft_experts"]), _fmt(c["tokens_per_s"], 1),
                  _fmt(c["tpot_ms"]), f"{c['tokens_per_s'] / b['tokens_per_s']:.2f}×")
    console.print(t)
    spec = "off" if b["gamma"] == 0 else f"γ={b['gamma']}, N={b['draft_experts']}"
    console.print(f"best: [bold]{b['policy']}[/] ({spec}) → {b['tokens_per_s']:,.1f} tokens/s, "
                  f"{b['h2d_bytes_per_token'] / 1e6:,.1f} MB over PCIe per token, {b['gpu_memory_gb']:.1f} GB GPU memory")
    for line in plan.get("explanation", {}).get("summary", [])[1:]:
        console.print(f"  {line}")
    for note in plan.get("notes", []):
        console.print(f"[dim]{note}[/]")
    if plan.get("html"):
        console.print(f"figure: {plan['html']}")
    if not plan.get("calibrated"):
        console.print("[dim]uncalibrated profile: ideal roofline efficiencies (an upper bound on speed)[/]")


def plan_figure(plan: dict[str, Any], max_lines: int = 8):
    """Tokens/s against γ, one line per draft-expert count (the best few), other policies as references."""
    import plotly.graph_objects as go

    fig = go.Figure()
    spec = [c for c in plan["candidates"] if c["policy"] == "specmoe" and c["fits"]]
    peak: dict[int, float] = {}
    for c in spec:
        peak[c["draft_experts"]] = max(peak.get(c["draft_experts"], 0.0), c["tokens_per_s"])
    for n in sorted(sorted(peak, key=lambda k: -peak[k])[:max_lines]):
        pts = sorted((c["gamma"], c["tokens_per_s"]) for c in spec if c["draft_experts"] == n)
        fig.add_trace(go.Scatter(x=[g for g, _ in pts], y=[v for _, v in pts], mode="lines+markers",
                                 name=f"specmoe N={n}"))
    for name, c in plan["best_by_policy"].items():
        if name != "specmoe":
            fig.add_hline(y=c["tokens_per_s"], line_dash="dot", annotation_text=name)
    fig.update_layout(title=f"{plan['model']} on {plan['hardware']}, batch {plan['batch']}",
                      xaxis_title="draft length γ (0 = no speculation)", yaxis_title="tokens/s",
                      template="plotly_white")
    return fig


# ---- sweep reports: HTML with plotly figures ---------------------------------------------------

# The study `specmoe report` runs when given no results (experiments/grids/default.yaml holds the same).
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
        "alpha": ["paper"],
    },
}
MAX_PAIRS = 6


def _rows(table: dict, **eq) -> np.ndarray:
    """Indices of rows that fit in memory and match every column == value."""
    mask = np.asarray(table["fits"], dtype=bool) & np.isfinite(np.asarray(table["tokens_per_s"], dtype=float))
    for k, v in eq.items():
        mask &= table[k] == v
    return np.flatnonzero(mask)


def best_rows(table: dict, idx: np.ndarray, by: tuple[str, ...]) -> dict[tuple, int]:
    """For each distinct value of the `by` columns among rows idx: the row with the most tokens/s."""
    out: dict[tuple, int] = {}
    tps = table["tokens_per_s"]
    for i in idx:
        key = tuple(table[k][i].item() if hasattr(table[k][i], "item") else table[k][i] for k in by)
        if key not in out or tps[i] > tps[out[key]]:
            out[key] = int(i)
    return out


def _slice(table: dict, model: str, hardware: str) -> tuple[np.ndarray, list[str]]:
    """Rows of one model × hardware at the first routing/lengths/acceptance, and notes on what was fixed."""
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


def throughput_vs_batch(table: dict, model: str, hardware: str):
    """Tokens/s against batch, one line per policy at its best γ and N (dashed: other acceptances)."""
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
            label = f"{pol} α={acc}" if spec and len(accs) > 1 else pol
            fig.add_trace(go.Scatter(
                x=list(rows), y=table["tokens_per_s"][rows_l], mode="lines+markers", name=label,
                line={"dash": "dash" if j else "solid"},
                customdata=np.stack([table["gamma"][rows_l], table["draft_experts"][rows_l]], axis=1),
                hovertemplate="batch %{x}: %{y:,.1f} tokens/s (γ=%{customdata[0]}, N=%{customdata[1]})"))
    _layout(fig, f"Throughput vs batch: {model} on {hardware}", "batch (sequences)", "tokens/s", notes, logx=True)
    return fig


def gamma_curves(table: dict, model: str, hardware: str, policy: str = "specmoe", batches: int = 4):
    """Tokens/s against γ (best N at each), one line per batch size, at the first acceptance."""
    import plotly.graph_objects as go

    idx, notes = _slice(table, model, hardware)
    idx = idx[table["policy"][idx] == policy]
    fig = go.Figure()
    accs = _acceptances(table, idx)
    if accs:
        idx = idx[table["acceptance"][idx] == accs[0]]
        notes.append(f"acceptance {accs[0]}")
    all_b = sorted(set(table["batch"][idx].tolist()))
    pick = sorted({all_b[round(i)] for i in np.linspace(0, len(all_b) - 1, min(batches, len(all_b)))}) \
        if all_b else []
    for b in pick:
        rows = best_rows(table, idx[table["batch"][idx] == b], ("gamma",))
        gs = sorted(rows)
        r = [rows[g] for g in gs]
        fig.add_trace(go.Scatter(x=[g[0] for g in gs], y=table["tokens_per_s"][r], mode="lines+markers",
                                 name=f"batch {b}", customdata=table["draft_experts"][r],
                                 hovertemplate="γ=%{x}: %{y:,.1f} tokens/s (N=%{customdata})"))
    _layout(fig, f"{policy}: throughput vs draft length γ ({model} on {hardware})", "γ (0 = no speculation)",
            "tokens/s", notes)
    return fig


def bytes_per_token(table: dict, model: str, hardware: str):
    """PCIe bytes per generated token against batch, per policy at its best configuration."""
    import plotly.graph_objects as go

    idx, notes = _slice(table, model, hardware)
    accs = _acceptances(table, idx)
    fig = go.Figure()
    for pol, rows in _policy_best(table, idx, accs[0] if accs else None).items():
        r = list(rows.values())
        fig.add_trace(go.Scatter(x=list(rows), y=table["h2d_bytes_per_token"][r] / 1e6, mode="lines+markers",
                                 name=pol))
    _layout(fig, f"Host→GPU bytes per token: {model} on {hardware}", "batch (sequences)", "MB per token",
            notes, logx=True)
    return fig


def timeline(trace, max_events: int = 4000):
    """Gantt view of a specmoe.trace/1 file (or Trace): one row per stream, colour per category."""
    import plotly.graph_objects as go


    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    events = sorted(tr.events, key=lambda e: e["ts_us"])
    shown = events[:max_events]
    fig = go.Figure()
    for cat in dict.fromkeys(e["cat"] for e in shown):
        evs = [e for e in shown if e["cat"] == cat]
        fig.add_trace(go.Bar(
            base=[e["ts_us"] / 1e3 for e in evs], x=[e["dur_us"] / 1e3 for e in evs],
            y=[str(e.get("stream", "main")) for e in evs], orientation="h", name=cat,
            text=[e["name"] for e in evs], hovertemplate="%{text}: %{base:.3f} ms + %{x:.3f} ms"))
    note = [f"first {len(shown):,} of {len(events):,} events"] if len(shown) < len(events) else []
    src = tr.header.get("source", "?")
    _layout(fig, f"Timeline ({src}: {tr.header.get('model', '')}, {tr.header.get('policy', {}).get('name', '')})",
            "time (ms)", "stream", note)
    fig.update_layout(barmode="overlay")
    return fig


def _layout(fig, title: str, x: str, y: str, notes: list[str], logx: bool = False) -> None:
    sub = f"<br><sup>{'; '.join(notes)}</sup>" if notes else ""
    fig.update_layout(title=title + sub, xaxis_title=x, yaxis_title=y, template="plotly_white")
    if logx:
        fig.update_xaxes(type="log")


def summary_rows(table: dict) -> list[dict[str, Any]]:
    """Best configuration per model × hardware × batch (first routing/lengths/acceptance)."""
    out = []
    for model, hardware in _pairs(table):
        idx, _ = _slice(table, model, hardware)
        accs = _acceptances(table, idx)
        if accs:
            idx = idx[(table["acceptance"][idx] == accs[0]) | (table["acceptance"][idx] == "")]
        for (b,), i in sorted(best_rows(table, idx, ("batch",)).items()):
            out.append({"model": model, "hardware": hardware, "batch": b, "policy": table["policy"][i],
                        "gamma": int(table["gamma"][i]), "draft_experts": int(table["draft_experts"][i]),
                        "tokens_per_s": float(table["tokens_per_s"][i]),
                        "h2d_mb_per_token": float(table["h2d_bytes_per_token"][i]) / 1e6})
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
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            return paths, f"PNG export skipped: {first}"
        paths.append(str(path))
    return paths, ""


def report_figures(table: dict, trace=None) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    for i, (model, hardware) in enumerate(_pairs(table)[:MAX_PAIRS]):
        tag = f"{i}-{model}-{hardware}"
        figs[f"throughput-{tag}"] = throughput_vs_batch(table, model, hardware)
        if (table["policy"] == "specmoe").any():
            figs[f"gamma-{tag}"] = gamma_curves(table, model, hardware)
        figs[f"bytes-{tag}"] = bytes_per_token(table, model, hardware)
    if trace is not None:
        figs["timeline"] = timeline(trace)
    return figs


def write_report(table: dict, out, trace=None, png_dir=None, title: str = "specmoe report",
                 plotlyjs: str | bool = True, notes: list[str] | None = None) -> dict[str, Any]:
    """An HTML page with every figure and a table of the best configuration per batch.

    plotlyjs: True embeds plotly.js (opens offline, ~4.6 MB), 'cdn' links it (small file).
    Returns {html, figures, png, png_note}.
    """

    figs = report_figures(table, trace)
    notes = list(notes or [])
    pairs = _pairs(table)
    if len(pairs) > MAX_PAIRS:
        notes.append(f"figures for the first {MAX_PAIRS} of {len(pairs)} model × hardware pairs")
    png, png_note = export_png(figs, png_dir) if png_dir else ([], "")
    if png_note:
        notes.append(png_note)
    parts = [f"<h1>{_html.escape(title)}</h1>",
             (f"<p>{len(table['batch']):,} configurations; engine {', '.join(sorted(set(table['engine'].tolist())))}; "
             "throughput of configurations that fit in GPU memory.</p>")]
    parts += [f"<p><em>{_html.escape(n)}</em></p>" for n in notes]
    for j, fig in enumerate(figs.values()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotlyjs if j == 0 else False))
    parts.append(_summary_html(summary_rows(table)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + _html.escape(title)
                   + "</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
                   "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
                   "</style></head><body>" + "\n".join(parts) + "</body></html>")
    return {"html": str(out), "figures": list(figs), "png": png, "png_note": png_note}


def _summary_html(rows: list[dict[str, Any]]) -> str:
    head = ("model", "hardware", "batch", "policy", "γ", "N", "tokens/s", "MB/token over PCIe")
    body = "".join(
        "<tr>" + "".join(f"<td>{v}</td>" for v in (r["model"], r["hardware"], r["batch"], r["policy"], r["gamma"],
                                                    r["draft_experts"], f"{r['tokens_per_s']:,.1f}",
                                                    f"{r['h2d_mb_per_token']:,.2f}")) + "</tr>" for r in rows)
    return ("<h2>Best configuration per batch</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + "</tr>" + body + "</table>")
