"""`specmoe` command line: predict, plan, simulate, hardware, models (and engine with the extra).

Bad input prints one line `error: ...` naming the field and exits 2; `--json` prints one object.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from specmoe import __version__
from specmoe.app.api import plan, predict
from specmoe.app.cli.calibrate import add_calibrate
from specmoe.app.cli.flags import (
    HelpFormatter,
    add_config_flags,
    config_kwargs,
    output_path,
    print_json,
)
from specmoe.app.cli.measurements import add_measurements
from specmoe.app.cli.parallel import add_plan_parallel
from specmoe.app.cli.report import add_report
from specmoe.app.cli.simulate import add_simulate
from specmoe.app.cli.sweep import add_sweep
from specmoe.app.report import print_plan, print_prediction, print_slo_plan, write_plan_html
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import list_hardware, load_system, system_to_dict
from specmoe.inputs.models import list_models, load_model, save_to_catalog


def cmd_predict(args) -> int:

    out = predict(**config_kwargs(args))
    print_json(out) if args.json else print_prediction(out)
    return 0 if out["fits"] else 1


def cmd_plan(args) -> int:

    if not 0 <= args.max_gamma <= 64:
        raise SpecMoEError(f"--max-gamma={args.max_gamma}: allowed 0..64 (0 = no speculation)")
    html = output_path(args.html, "--html", (".html", ".htm"))
    policies = (
        tuple(p.strip() for p in args.policies.split(",") if p.strip()) if args.policies else None
    )
    if args.policies is not None and not policies:
        raise SpecMoEError(f"--policies={args.policies!r}: give at least one policy name")
    kw = config_kwargs(args, with_policy=False)
    if args.tpot_ms is not None or args.ttft_ms is not None or args.rate is not None:
        return _plan_slo(args, policies, kw)
    result = plan(
        gammas=range(args.max_gamma + 1),
        confirm=args.confirm,
        static_batch=args.static_batch,
        **({"policies": policies} if policies else {}),
        **kw,
    )
    if html:
        write_plan_html(result, html)
        result["html"] = str(html)
    print_json(result) if args.json else print_plan(result)
    return 0


def _plan_slo(args, policies, kw) -> int:
    """`plan --tpot-ms/--ttft-ms [--rate]`: the batch is searched (1..--max-batch), not given."""
    if args.html or args.static_batch:
        raise SpecMoEError("--html/--static-batch: not available with service-level targets "
                           "(--tpot-ms, --ttft-ms, --rate)")
    kw.pop("batch")
    result = plan(gammas=range(args.max_gamma + 1), confirm=args.confirm, tpot_ms=args.tpot_ms,
                  ttft_ms=args.ttft_ms, rate=args.rate, max_batch=args.max_batch,
                  **({"policies": policies} if policies else {}), **kw)
    print_json(result) if args.json else print_slo_plan(result)
    confirmation = result.get("confirmation", {})
    return 1 if confirmation.get("ran") and not confirmation["meets"] else 0


def cmd_hardware(args) -> int:

    if args.action == "list":
        listing = list_hardware()
        if args.json:
            print_json(listing)
        else:
            for kind, names in listing.items():
                print(f"{kind}: {', '.join(names)}")
        return 0
    if not args.name:
        raise SpecMoEError("hardware show: give a system or GPU name (see `specmoe hardware list`)")
    print_json(system_to_dict(load_system(args.name)))
    return 0


def cmd_models(args) -> int:

    if args.action == "list":
        names = list_models()
        print_json(names) if args.json else print("\n".join(names))
        return 0
    if not args.name:
        raise SpecMoEError(f"models {args.action}: give a model name or a config.json path")
    if args.action == "import":
        path = save_to_catalog(args.name, args.as_name)
        print(f"imported {args.name} as {path}")
        return 0
    print_json(load_model(args.name).to_dict())
    return 0


EPILOG = """examples:
  specmoe predict --model mixtral-8x7b --hardware h100-pcie --batch 64 --gamma 5
  specmoe plan --model mixtral-8x7b --hardware h100-pcie --html plan.html
  specmoe hardware list
  specmoe <command> --help    every flag of a command, with its default"""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specmoe", description=__doc__.splitlines()[0],
                                     epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"specmoe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        help="analytic prediction for one configuration",
        description="Analytic prediction of one configuration: throughput, latency, "
        "PCIe traffic, GPU memory.\nExit status 1 when it does not fit in GPU memory.",
    )
    add_config_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "plan",
        help="choose policy, γ and N for a model, hardware and batch",
        description="Search every policy × draft length γ × draft experts N, confirm the "
        "best with the simulator,\nand explain the choice.",
    )
    add_config_flags(p, with_policy=False)
    p.add_argument(
        "--policies",
        default=None,
        help="comma-separated subset of policies to consider (default: all analytic ones)",
    )
    p.add_argument(
        "--max-gamma", type=int, default=16, help="largest γ to try (0..64; 0 = no speculation)"
    )
    p.add_argument("--html", default=None, metavar="PATH",
                   help="write a page with the recommendation and an interactive figure here")
    p.add_argument(
        "--static-batch",
        action="store_true",
        help="the batch runs as one static batch of --output-len tokens "
             "(count its slowest sequence)",
    )
    p.add_argument(
        "--confirm",
        default="auto",
        choices=("auto", "sim", "analytic"),
        help="confirm the top candidates with the simulator (auto: when it is installed)",
    )
    p.add_argument(
        "--tpot-ms",
        type=float,
        default=None,
        help="service level: time per output token target (p90); the batch is then searched",
    )
    p.add_argument(
        "--ttft-ms",
        type=float,
        default=None,
        help="service level: time to first token target (p90)",
    )
    p.add_argument("--rate", type=float, default=None,
                   help="service level: requests/s to serve; answers how many GPUs (replicas)")
    p.add_argument(
        "--max-batch", type=int, default=512, help="largest batch the service-level search tries"
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "hardware",
        help="list hardware profiles, or show one",
        description="list: the names of every system, GPU, host and link profile.\n"
        "show NAME: one profile, resolved (system parts inline), as JSON.",
    )
    p.add_argument("action", choices=("list", "show"), help="list every name, or show one profile")
    p.add_argument("name", nargs="?", help="(show) system or GPU name, or a profile YAML path")
    p.add_argument("--json", action="store_true", help="(list) print the listing as JSON")
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser(
        "models",
        help="list model specs, show one, or import a config.json",
        description="list: every catalog model name.\n"
        "show NAME: one model's shape (layers, experts, sizes) as JSON.\n"
        "import PATH [--as NAME]: add a Hugging Face config.json to your catalog.",
    )
    p.add_argument("action", choices=("list", "show", "import"),
                   help="list names, show one model, or import a config.json")
    p.add_argument(
        "name", nargs="?", help="(show) catalog name or config.json path; (import) config.json path"
    )
    p.add_argument(
        "--as", dest="as_name", default=None, help="(import) catalog name for the imported model"
    )
    p.add_argument("--json", action="store_true", help="(list) print the names as JSON")
    p.set_defaults(func=cmd_models)

    for adder in (add_simulate, add_calibrate, add_sweep, add_report, add_plan_parallel,
                  add_measurements):
        adder(sub)
    # The engine imports torch (seconds): load it only when asked for.
    if argv and argv[0] == "engine":
        _optional_commands(sub, "specmoe.app.cli.engine")
    else:
        sub.add_parser("engine", help="run the real engine: run, bench, microbench (needs torch)")
    _use_formatter(parser)
    return parser


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """Every sub-command's help shows its defaults (parsers are made in several modules)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _use_formatter(child)


def _optional_commands(sub, module: str) -> None:
    """Parts that add their own sub-commands via `add_commands(subparsers)` (engine needs torch)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    adder: Callable | None = getattr(mod, "add_commands", None) or getattr(
        mod, "add_engine_commands", None
    )
    if adder:
        adder(sub)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 does not fit, 2 bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
        if not hasattr(args, "func"):
            print(
                "error: the engine needs the `engine` extra (pip install 'specmoe[engine]')",
                file=sys.stderr,
            )
            return 2
        return args.func(args)
    except SpecMoEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `specmoe ... | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not fail again, and exit as a process killed by SIGPIPE would.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):   # stdout without a file descriptor (tests)
            pass
        return 141
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:   # a file the checks above did not foresee: name it, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
