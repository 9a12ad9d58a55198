"""`specmoe` command line: predict, plan, simulate, hardware, models (and engine with the extra).

Bad input prints one line `error: ...` naming the field and exits 2; `--json` prints one object.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from specmoe.app.api import plan, predict
from specmoe.app.cli.calibrate import add_calibrate
from specmoe.app.cli.flags import add_config_flags, config_kwargs, print_json
from specmoe.app.cli.measurements import add_measurements
from specmoe.app.cli.parallel import add_plan_parallel
from specmoe.app.cli.report import add_report
from specmoe.app.cli.simulate import add_simulate
from specmoe.app.cli.sweep import add_sweep
from specmoe.app.report import plan_figure, print_plan, print_prediction
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import list_hardware, load_system, system_to_dict
from specmoe.inputs.models import list_models, load_model, save_to_catalog


def cmd_predict(args) -> int:

    out = predict(**config_kwargs(args))
    print_json(out) if args.json else print_prediction(out)
    return 0 if out["fits"] else 1


def cmd_plan(args) -> int:

    policies = tuple(args.policies.split(",")) if args.policies else None
    kw = config_kwargs(args, with_policy=False)
    result = plan(gammas=range(args.max_gamma + 1), confirm=args.confirm, static_batch=args.static_batch, **({"policies": policies} if policies else {}), **kw)
    if args.html:
        plan_figure(result).write_html(args.html, include_plotlyjs=True)
        result["html"] = args.html
    print_json(result) if args.json else print_plan(result)
    return 0


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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specmoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="analytic prediction for one configuration")
    add_config_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="choose policy, γ and N for a model, hardware and batch")
    add_config_flags(p, with_policy=False)
    p.add_argument("--policies", default=None, help="comma-separated subset of policies to consider")
    p.add_argument("--max-gamma", type=int, default=16, help="largest γ to try (0..max)")
    p.add_argument("--html", default=None, help="write an interactive plotly figure here")
    p.add_argument("--static-batch", action="store_true",
                   help="the batch runs as one static batch of --output-len tokens (count its slowest sequence)")
    p.add_argument("--confirm", default="auto", choices=("auto", "sim", "analytic"),
                   help="confirm the top candidates with the simulator (auto: when it is installed)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("hardware", help="list or show hardware profiles")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser("models", help="list, show or import model specs")
    p.add_argument("action", choices=("list", "show", "import"))
    p.add_argument("name", nargs="?", help="catalog name, or config.json path for import/show")
    p.add_argument("--as", dest="as_name", default=None, help="catalog name for an imported model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    for adder in (add_simulate, add_calibrate, add_sweep, add_report, add_plan_parallel,
                  add_measurements):
        adder(sub)
    # The engine imports torch (seconds): load it only when asked for.
    if argv and argv[0] == "engine":
        _optional_commands(sub, "specmoe.app.cli.engine")
    else:
        sub.add_parser("engine", help="run the real engine (needs the `engine` extra: torch, triton)")
    return parser


def _optional_commands(sub, module: str) -> None:
    """Parts that add their own sub-commands via `add_commands(subparsers)` (engine needs torch)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    adder: Callable | None = getattr(mod, "add_commands", None) or getattr(mod, "add_engine_commands", None)
    if adder:
        adder(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if not hasattr(args, "func"):
        print("error: the engine needs the `engine` extra (pip install 'specmoe[engine]')", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except SpecMoEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
