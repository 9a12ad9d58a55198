"""Sweep speed: a 100,000+-configuration analytic grid end to end (check, evaluate, write).

    python experiments/bench_sweep.py [--grid experiments/grids/bench_100k.yaml] [--jobs N]

Target (issue 9): under 60 s on this 2-core machine. Prints the figures measured in this run: the
whole `run_sweep` (grid checks, process pool, chunk files and manifest, final CSV and Parquet)
for the local pool and for one process.
"""

import argparse
import tempfile
import time
from pathlib import Path

from specmoe.planning.sweep import load_grid, run_sweep

HERE = Path(__file__).resolve().parent


def timed(grid, out: Path, **kw) -> float:
    t0 = time.perf_counter()
    table = run_sweep(grid, out, progress=False, fresh=True, **kw)
    dt = time.perf_counter() - t0
    assert len(table["batch"]) == grid.size
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default=str(HERE / "grids" / "bench_100k.yaml"))
    ap.add_argument("--jobs", type=int, default=None, help="local pool size (default: CPU count)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    grid = load_grid(args.grid)
    check_s = time.perf_counter() - t0
    n = grid.size
    print(
        f"grid {grid.name}: {n:,} configurations, {len(grid.chunks()[1])} chunks (checked in "
        f"{check_s:.2f} s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, out, kw in (
            ("local pool, csv", "r.csv", {"jobs": args.jobs}),
            ("local pool, parquet", "r.parquet", {"jobs": args.jobs}),
            ("one process, parquet", "s.parquet", {"backend": "serial"}),
        ):
            dt = timed(grid, Path(tmp) / out, **kw)
            size = (Path(tmp) / out).stat().st_size / 1e6
            print(
                f"{label:22s} {dt:6.2f} s = {n / dt:10,.0f} configurations/s  ({size:.1f} MB "
                f"written)  {'OK' if dt < 60 else 'SLOWER THAN'} (target < 60 s)"
            )


if __name__ == "__main__":
    main()
