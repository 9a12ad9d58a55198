"""`specmoe simulate`: the predict flags plus the run's own (iterations, seed, trace, serving)."""
from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from specmoe.app.cli.flags import add_config_flags, config_kwargs, output_path, print_json
from specmoe.app.report import print_prediction
from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write_text
from specmoe.predictors.sim import simulate


def add_simulate(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="discrete-event simulation of one configuration (every policy)"
    )
    add_config_flags(p)
    p.add_argument("--iterations", type=int, default=200, help="decode iterations (offline mode)")
    p.add_argument("--seed", type=int, default=0, help="seed of the routing and acceptance sampler")
    p.add_argument(
        "--trace",
        default=None,
        metavar="PATH",
        help="write a specmoe.trace/1 trace (.jsonl or .jsonl.gz)",
    )
    p.add_argument(
        "--chrome", default=None, metavar="PATH", help="write the trace as Chrome/Perfetto JSON"
    )
    p.add_argument(
        "--serving", action="store_true", help="serving mode: arrivals and continuous batching"
    )
    p.add_argument(
        "--rate", type=float, default=None, help="Poisson arrival rate, requests/s (serving)"
    )
    p.add_argument("--requests", type=int, default=100, help="requests to serve (serving)")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:

    output_path(args.trace, "--trace", (".jsonl", ".jsonl.gz"))
    output_path(args.chrome, "--chrome", (".json",))
    for flag, value, lo in (("--iterations", args.iterations, 1), ("--requests", args.requests, 1)):
        if value < lo:
            raise SpecMoEError(f"{flag}={value}: must be >= {lo}")
    kw = config_kwargs(args)
    res = simulate(
        iterations=args.iterations,
        seed=args.seed,
        trace=bool(args.trace or args.chrome),
        serving=args.serving,
        rate=args.rate,
        requests=args.requests,
        **kw,
    )
    out = res.to_dict()
    if args.trace:
        out["trace"] = str(res.write_trace(args.trace))
    if args.chrome:
        atomic_write_text(args.chrome, json.dumps(res.chrome()))
        out["chrome_trace"] = args.chrome
    if args.json:
        print_json(out)
    else:
        print_prediction(out)
        _print_sim(out)
    return 0 if out["fits"] else 1


def _print_sim(out: dict) -> None:

    t = Table(title=f"simulation ({out['mode']}, seed {out['seed']})", show_header=False)

    def pct(d):
        return " / ".join("-" if v is None else f"{v:,.2f}" for v in d.values())

    rows = [
        ("iterations", f"{out['iterations']}"),
        ("TPOT p50/p90/p99 (ms)", pct(out["tpot_ms_percentiles"])),
        ("TTFT p50/p90/p99 (ms)", pct(out["ttft_ms_percentiles"])),
    ]
    if out["tokens_per_verification"] is not None:
        rows.append(("tokens per verification", f"{out['tokens_per_verification']:.3f}"))
    if out["cache_hit_rate"] is not None:
        rows.append(("resident hit rate", f"{out['cache_hit_rate']:.3f}"))
    rows += [(f"{k} GB moved", f"{v / 1e9:,.2f}") for k, v in out["bytes"].items() if v]
    rows += [(f"{k} utilisation", f"{v:.1%}") for k, v in out["utilisation"].items()]
    rows += _load_rows(out.get("load"))
    rows.append(
        (
            "events / wall s",
            f"{out['events']:,} / {out['wall_s']:.2f} ({out['events_per_s']:,.0f} per s)",
        )
    )
    for k, v in rows:
        t.add_row(k, v)
    console = Console()
    console.print(t)
    load = out.get("load") or {}
    if load.get("overloaded"):
        console.print(
            f"[bold red]overloaded:[/] {load['rate_rps']:g} requests/s "
            f"({load['demand_tokens_per_s']:,.0f} tokens/s) against a capacity of at most "
            f"{load['capacity_rps']:.3g} requests/s ({load['capacity_tokens_per_s']:,.0f} "
            "tokens/s): queues grow without bound; latency percentiles depend on the run length"
        )


def _load_rows(load: dict | None) -> list[tuple[str, str]]:
    """Serving rows: engine busy share, offered load ρ = demand / capacity, and the overload
    flag."""
    if not load:
        return []
    rows = [("engine busy", f"{load['engine_busy']:.1%}")]
    if load.get("load") is not None:
        rows += [("demand / capacity (tokens/s)",
                  f"{load['demand_tokens_per_s']:,.1f} / {load['capacity_tokens_per_s']:,.1f}"),
                 ("offered load ρ", f"{load['load']:.2f}"),
                 ("overloaded", "YES" if load["overloaded"] else "no")]
    return rows
