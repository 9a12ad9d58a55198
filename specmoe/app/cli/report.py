"""`specmoe report`: an HTML report with plotly figures from sweep results or a default study."""
from __future__ import annotations

from rich.console import Console

from specmoe.app.cli.flags import output_path
from specmoe.app.report import DEFAULT_STUDY, REQUIRED_COLUMNS, write_report
from specmoe.errors import SpecMoEError
from specmoe.measure.trace import read_trace
from specmoe.planning.sweep import load_results, run_sweep


def cmd_report(args) -> int:
    console = Console(stderr=True)
    output_path(args.output, "--output", (".html", ".htm"))
    output_path(args.png, "--png", directory=True)
    _window(args.trace_window)
    if args.trace_window and not args.trace:
        raise SpecMoEError("--trace-window: give --trace too")
    trace = read_trace(args.trace, "--trace") if args.trace else None   # before any figure is drawn
    if args.results:
        table = load_results(args.results)
        missing = [c for c in REQUIRED_COLUMNS if c not in table]
        if missing:
            raise SpecMoEError(f"results {args.results}: lacks column(s) {missing}; "
                               "give the output of `specmoe sweep`")
        title = f"specmoe report: {args.results}"
    else:
        console.print(
            "no results given: running the default study (experiments/grids/default.yaml)"
        )
        table = run_sweep(DEFAULT_STUDY, progress=False, backend="serial")
        title = "specmoe report: default study"
    info = write_report(
        table,
        args.output,
        trace=trace,
        trace_window_ms=_window(args.trace_window),
        png_dir=args.png,
        title=title,
        plotlyjs="cdn" if args.cdn else True,
    )
    console.print(f"wrote {info['html']} ({len(info['figures'])} figures)")
    if info["png"]:
        console.print(f"PNG: {len(info['png'])} files in {args.png}")
    if info["png_note"]:
        console.print(info["png_note"])
    return 0


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        a, b = (float(v) for v in text.split(":"))
    except ValueError:
        raise SpecMoEError(
            f"--trace-window={text!r}: expected START:END in ms, e.g. 0:50"
        ) from None
    if not 0 <= a < b:
        raise SpecMoEError(f"--trace-window={text!r}: need 0 <= START < END")
    return a, b


def add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="HTML report with plotly figures from sweep results (or a default study)"
    )
    p.add_argument(
        "results",
        nargs="?",
        default=None,
        help="sweep results (.csv or .parquet from `specmoe sweep`); none: run the default study",
    )
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write")
    p.add_argument(
        "--trace",
        default=None,
        help="a specmoe.trace/1 JSONL(.gz) file (`simulate --trace`, `engine run --trace`) "
        "to draw as a timeline",
    )
    p.add_argument("--trace-window", default=None, metavar="START:END",
                   help="part of the trace to draw, in ms from its start (default: from the start, "
                        "up to 4,000 events)")
    p.add_argument(
        "--png", default=None, metavar="DIR", help="also export each figure as PNG here (kaleido)"
    )
    p.add_argument(
        "--cdn", action="store_true", help="link plotly.js from its CDN instead of embedding it"
    )
    p.set_defaults(func=cmd_report)
