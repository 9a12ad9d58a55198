"""`specmoe report`: an HTML report with plotly figures from sweep results or a default study."""
from __future__ import annotations

from rich.console import Console

from specmoe.app.report import DEFAULT_STUDY, write_report
from specmoe.measure.trace import read_trace
from specmoe.planning.sweep import load_results, run_sweep


def cmd_report(args) -> int:
    console = Console(stderr=True)
    if args.results:
        table = load_results(args.results)
        title = f"specmoe report: {args.results}"
    else:
        console.print("no results given: running the default study (experiments/grids/default.yaml)")
        table = run_sweep(DEFAULT_STUDY, progress=False, backend="serial")
        title = "specmoe report: default study"
    if args.trace:
        read_trace(args.trace)     # a bad trace fails here, before any figure is drawn
    info = write_report(table, args.output, trace=args.trace, png_dir=args.png, title=title,
                        plotlyjs="cdn" if args.cdn else True)
    console.print(f"wrote {info['html']} ({len(info['figures'])} figures)")
    if info["png"]:
        console.print(f"PNG: {len(info['png'])} files in {args.png}")
    if info["png_note"]:
        console.print(info["png_note"])
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report with plotly figures from sweep results (or a default study)")
    p.add_argument("results", nargs="?", default=None, help="sweep results (.csv or .parquet); none: default study")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write")
    p.add_argument("--trace", default=None, help="a specmoe.trace/1 JSONL(.gz) file to draw as a timeline")
    p.add_argument("--png", default=None, metavar="DIR", help="also export each figure as PNG here (kaleido)")
    p.add_argument("--cdn", action="store_true", help="link plotly.js from its CDN instead of embedding it")
    p.set_defaults(func=cmd_report)
