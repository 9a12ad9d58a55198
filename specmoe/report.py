"""Human-readable output: rich tables for the terminal and plotly figures for HTML reports."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

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
    if plan.get("html"):
        console.print(f"figure: {plan['html']}")
    if not plan.get("calibrated"):
        console.print("[dim]uncalibrated profile: ideal roofline efficiencies (an upper bound on speed)[/]")


def plan_figure(plan: dict[str, Any]):
    """Tokens/s against γ, one line per draft-expert count, with the other policies as references."""
    import plotly.graph_objects as go

    fig = go.Figure()
    spec = [c for c in plan["candidates"] if c["policy"] == "specmoe" and c["fits"]]
    for n in sorted({c["draft_experts"] for c in spec}):
        pts = sorted((c["gamma"], c["tokens_per_s"]) for c in spec if c["draft_experts"] == n or c["gamma"] == 0)
        fig.add_trace(go.Scatter(x=[g for g, _ in pts], y=[v for _, v in pts], mode="lines+markers",
                                 name=f"specmoe N={n}"))
    for name, c in plan["best_by_policy"].items():
        if name != "specmoe":
            fig.add_hline(y=c["tokens_per_s"], line_dash="dot", annotation_text=name)
    fig.update_layout(title=f"{plan['model']} on {plan['hardware']}, batch {plan['batch']}",
                      xaxis_title="draft length γ (0 = no speculation)", yaxis_title="tokens/s",
                      template="plotly_white")
    return fig
