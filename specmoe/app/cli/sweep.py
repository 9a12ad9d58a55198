"""`specmoe sweep`: run a grid of configurations to CSV/Parquet, resumably."""
from __future__ import annotations

import time

from rich.console import Console

from specmoe.app.cli.flags import output_path
from specmoe.errors import SpecMoEError
from specmoe.planning.sweep import BACKENDS, ENGINES, RESULT_SUFFIXES, load_grid, run_sweep


def cmd_sweep(args) -> int:
    console = Console(stderr=True)
    output_path(args.output, "--output", RESULT_SUFFIXES)    # before the sweep, not after it
    if args.jobs is not None and args.jobs < 1:
        raise SpecMoEError(f"--jobs={args.jobs}: must be >= 1")
    grid = load_grid(args.grid, args.engine)
    groups, chunks = grid.chunks()
    console.print(
        f"{grid.name}: {grid.size:,} configurations in {len(groups)} groups, {len(chunks)} chunks, "
        f"engine {grid.engine}, backend {args.backend}"
    )
    t0 = time.perf_counter()
    try:
        table = run_sweep(
            grid,
            args.output,
            jobs=args.jobs,
            backend=args.backend,
            progress=not args.quiet,
            fresh=args.fresh,
            ray_address=args.ray_address,
            console=console,
        )
    except KeyboardInterrupt:
        console.print(f"interrupted: finished chunks are kept in {args.output}.parts; "
                      "run the same command again to resume")
        raise
    dt = time.perf_counter() - t0
    n = len(table.get("batch", ()))
    console.print(
        f"wrote {args.output}: {n:,} rows in {dt:.1f} s ({n / max(dt, 1e-9):,.0f} configurations/s)"
    )
    return 0


def add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of configurations (analytic or simulated) to CSV/Parquet"
    )
    p.add_argument(
        "grid",
        help="grid YAML (axes: model, hardware, policy, batch, gamma, draft_experts, alpha, ...)",
    )
    p.add_argument("-o", "--output", required=True, help="results file: .csv or .parquet")
    p.add_argument("--engine", choices=ENGINES, default=None, help="override the grid's engine")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local process pool (default), ray or serial",
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="worker processes (local; default: CPU count)"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS or a local one)",
    )
    p.add_argument("--fresh", action="store_true", help="discard saved chunks of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)
