"""`specmoe calibrate` and `specmoe validate`: fit a profile to traces, check it against runs."""
from __future__ import annotations

import json
import sys

from specmoe.app.cli.flags import output_path
from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write_text
from specmoe.fit.calibrate import (
    calibrate,
    fit_warnings,
    holdout_table,
    markdown_tables,
    params_table,
    transfer,
    write_html,
)
from specmoe.fit.solver import FitOptions
from specmoe.fit.validate import markdown_table, validate
from specmoe.inputs.hardware import save_system


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a calibrated hardware profile to engine traces")
    p.add_argument("traces", nargs="*", help="engine traces (.jsonl or .jsonl.gz): microbenchmarks "
                                             "and/or end-to-end runs of one device")
    p.add_argument("--hardware", required=True, help="base system (name or YAML) whose peaks the "
                                                     "fitted efficiencies scale")
    p.add_argument(
        "-o", "--out", required=True, help="profile to write, e.g. hwprofiles/calibrated/NAME.yaml"
    )
    p.add_argument("--name", default=None, help="profile name (default: the output file's stem)")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold hold-out by configuration")
    p.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="hold a parameter at VALUE (default: the base profile's) instead of fitting it",
    )
    p.add_argument("--min-samples", type=int, default=1,
                   help="drop op configurations measured fewer times than this")
    p.add_argument("--quantile", type=float, default=0.5,
                   help="quantile of each configuration's repeats fitted (0.5 median; low on a "
                        "shared machine, where interference only adds time)")
    p.add_argument("--op-traces", default="all", choices=("all", "microbenchmark", "end-to-end"),
                   help="whose op events fit the op parameters (end-to-end runs always give "
                        "layer_overhead_us)")
    p.add_argument("--loss", default="soft_l1", choices=("linear", "soft_l1", "huber", "cauchy"),
                   help="least-squares loss on relative residuals (robust by default)")
    p.add_argument("--groups", default="shared", choices=("shared", "per-class"),
                   help="one efficiency group for all weight GEMMs, or one per op class (dense "
                        "GEMM, grouped MoE, decode and prefill attention: GPU kernel tables)")
    p.add_argument("--html", default=None, help="write an HTML report with parity plots here")
    p.add_argument("--transfer-from", default=None,
                   help="no fit: the --hardware target with this calibrated profile's efficiencies")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=cmd_calibrate)
    add_validate(sub)


def _parse_fix(text: str) -> tuple[str, float | None]:
    name, _, value = text.partition("=")
    if not value:
        return name.strip(), None
    try:
        return name.strip(), float(value)
    except ValueError:
        raise SpecMoEError(f"--fix {text!r}: VALUE must be a number") from None


def cmd_calibrate(args) -> int:
    out = output_path(args.out, "--out", (".yaml", ".yml"))
    output_path(args.html, "--html", (".html", ".htm"))
    name = args.name or out.stem
    if args.transfer_from:
        system = transfer(args.transfer_from, args.hardware, name)
        save_system(system, out)
        print(f"wrote {out} ({args.hardware} with efficiencies of {args.transfer_from})")
        return 0
    opts = FitOptions(
        folds=args.folds,
        loss=args.loss,
        min_samples=args.min_samples,
        quantile=args.quantile,
        op_traces=args.op_traces,
        groups=args.groups,
        fix=tuple(_parse_fix(f) for f in args.fix),
    )
    command = "specmoe " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["calibrate"] else None
    calib = calibrate(args.traces, args.hardware, name=name, opts=opts, command=command)
    save_system(calib.system, out)
    if args.html:
        write_html(calib, args.html, plotlyjs=True)     # opens offline, as `report` does
    warnings = fit_warnings(calib)
    if args.json:
        print(
            json.dumps(
                {
                    "profile": str(out),
                    "holdout": holdout_table(calib),
                    "parameters": params_table(calib),
                    "fixed": calib.fixed,
                    "warnings": warnings,
                },
                indent=2,
                default=float,
            )
        )
    else:
        print(f"wrote {out}" + (f" and {args.html}" if args.html else ""))
        print(markdown_tables(calib))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if warnings:
        print("warning: see README, 'Which traces to calibrate with'", file=sys.stderr)
    return 0


def add_validate(sub) -> None:
    p = sub.add_parser(
        "validate", help="predict measured end-to-end engine runs; print the error table"
    )
    p.add_argument("traces", nargs="+", help="end-to-end engine traces (.jsonl or .jsonl.gz)")
    p.add_argument("--hardware", required=True, help="calibrated profile (name or YAML)")
    p.add_argument("--predictor", default="auto", choices=("auto", "sim", "analytic"),
                   help="simulator where importable (auto), or the analytic model")
    p.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    p.add_argument("--quantile", type=float, default=0.5,
                   help="quantile of each configuration's repeats (decode time) compared")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    if not 0.0 <= args.quantile <= 1.0:
        raise SpecMoEError(f"--quantile={args.quantile}: allowed [0, 1]")
    output_path(args.markdown, "--markdown")
    result = validate(args.traces, args.hardware, args.predictor, quantile=args.quantile)
    table = markdown_table(result)
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n")
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(
            f"{result['hardware']} ({'calibrated' if result['calibrated'] else 'not calibrated'})"
        )
        print(table)
    return 0
