"""`specmoe` command line: predict, plan, simulate, hardware, models (and engine with the extra).

Bad input prints one line `error: ...` naming the field and exits 2; `--json` prints one object.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from specmoe.errors import SpecMoEError


def _add_config_flags(p: argparse.ArgumentParser, with_policy: bool = True) -> None:
    p.add_argument("--model", default="mixtral-8x7b", help="catalog name or path to a config.json")
    p.add_argument("--hardware", default="h100-pcie", help="system or GPU name, or a YAML path")
    p.add_argument("--host", default=None, help="override the system's host profile")
    p.add_argument("--link", default=None, help="override the system's host-GPU link profile")
    p.add_argument("--batch", type=int, default=64, help="sequences decoded together")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=int, default=256, help="generated tokens per sequence")
    p.add_argument("--acceptance", default=None,
                   help="α in [0,1), 'paper' (SpecMoE's published τ, default) or 'measured:NAME'")
    p.add_argument("--routing", default=None, help="'uniform' (default), 'zipf:S' or 'measured:NAME'")
    if with_policy:
        p.add_argument("--policy", default="specmoe", help="ondemand|overlap|caching|cpu|specmoe|...")
        p.add_argument("--gamma", type=int, default=None, help="draft tokens per verification (0 = off)")
        p.add_argument("--draft-experts", type=int, default=None, help="N resident draft experts per layer")
        p.add_argument("--draft-set", default=None, help="random|hot|hottemporal")
        p.add_argument("--cache-fraction", type=float, default=None, help="experts pinned per layer (caching)")
        p.add_argument("--prefetch-precision", type=float, default=None,
                       help="share of prefetched experts that were needed (overlap; 1 = no waste)")
        p.add_argument("--prefetch-hit-rate", default=None,
                       help="share of next-layer experts prefetched right (overlap, spmoe, fate): "
                            "a number in [0,1] (default 1.0, an oracle) or 'measured:NAME'")
        p.add_argument("--spec-min-batch", type=int, default=None, help="speculation off below this batch")
    p.add_argument("--json", action="store_true", help="print one JSON object")


POLICY_FLAGS = ("draft_set", "cache_fraction", "prefetch_hit_rate", "prefetch_precision", "spec_min_batch")


def _hardware(args):
    from specmoe.hardware import load_system

    return load_system(args.hardware, host=args.host, link=args.link)


def config_kwargs(args, with_policy: bool = True) -> dict[str, Any]:
    kw = {"model": args.model, "hardware": _hardware(args), "batch": args.batch, "prompt_len": args.prompt_len,
              "output_len": args.output_len, "acceptance": args.acceptance, "routing": args.routing}
    if with_policy:
        kw.update(policy=args.policy, gamma=args.gamma, draft_experts=args.draft_experts)
        kw.update({k: getattr(args, k) for k in POLICY_FLAGS if getattr(args, k) is not None})
        if args.prefetch_hit_rate is not None:
            from specmoe.workload import parse_prefetch_hit_rate

            kw["prefetch_hit_rate"] = parse_prefetch_hit_rate(args.prefetch_hit_rate, args.batch,
                                                              "--prefetch-hit-rate")
    return kw


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float))


def cmd_predict(args) -> int:
    from specmoe.api import predict
    from specmoe.report import print_prediction

    out = predict(**config_kwargs(args))
    _print_json(out) if args.json else print_prediction(out)
    return 0 if out["fits"] else 1


def cmd_plan(args) -> int:
    from specmoe.api import plan
    from specmoe.report import plan_figure, print_plan

    policies = tuple(args.policies.split(",")) if args.policies else None
    kw = config_kwargs(args, with_policy=False)
    result = plan(gammas=range(args.max_gamma + 1), confirm=args.confirm, static_batch=args.static_batch, **({"policies": policies} if policies else {}), **kw)
    if args.html:
        plan_figure(result).write_html(args.html, include_plotlyjs=True)
        result["html"] = args.html
    _print_json(result) if args.json else print_plan(result)
    return 0


def cmd_hardware(args) -> int:
    from specmoe.hardware import list_hardware, load_system, system_to_dict

    if args.action == "list":
        listing = list_hardware()
        if args.json:
            _print_json(listing)
        else:
            for kind, names in listing.items():
                print(f"{kind}: {', '.join(names)}")
        return 0
    if not args.name:
        raise SpecMoEError("hardware show: give a system or GPU name (see `specmoe hardware list`)")
    _print_json(system_to_dict(load_system(args.name)))
    return 0


def cmd_models(args) -> int:
    from specmoe.models import list_models, load_model, save_to_catalog

    if args.action == "list":
        names = list_models()
        _print_json(names) if args.json else print("\n".join(names))
        return 0
    if not args.name:
        raise SpecMoEError(f"models {args.action}: give a model name or a config.json path")
    if args.action == "import":
        path = save_to_catalog(args.name, args.as_name)
        print(f"imported {args.name} as {path}")
        return 0
    _print_json(load_model(args.name).to_dict())
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specmoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="analytic prediction for one configuration")
    _add_config_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="choose policy, γ and N for a model, hardware and batch")
    _add_config_flags(p, with_policy=False)
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

    for module in ("specmoe.sim.cli", "specmoe.calibrate", "specmoe.sweep", "specmoe.report",
                   "specmoe.measure.aiconfigurator"):
        _optional_commands(sub, module)
    # The engine imports torch (seconds): load it only when asked for.
    if argv and argv[0] == "engine":
        _optional_commands(sub, "specmoe.engine.cli")
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
