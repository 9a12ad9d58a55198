"""Simulator speed: simulated events per second on one core.

    python experiments/bench_sim.py [--iterations 200] [--repeat 3]

Configuration of the target (DESIGN.md §11, >= 100,000 events/s): Mixtral-8x7B on h100-pcie,
batch 64, γ = 5, specmoe, 200 decode iterations (offline mode). Events are SimPy events processed
(timeouts, resource requests and releases, process starts and ends). Prints each run's figures
and the best; `--trace` adds a run that records the trace, to show what recording costs.
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target is stated

from specmoe.inputs.setup import resolve
from specmoe.predictors.sim import Simulator


def run_once(setup, iterations: int, trace: bool) -> tuple[float, float, int, float]:
    t0 = time.perf_counter()
    sim = Simulator(setup, iterations=iterations, seed=0, trace=trace)
    build = time.perf_counter() - t0
    res = sim.run()
    return build, res.wall_s, res.events, res.tokens_per_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="mixtral-8x7b")
    ap.add_argument("--hardware", default="h100-pcie")
    ap.add_argument("--policy", default="specmoe")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--trace", action="store_true", help="also time a run that records the trace")
    args = ap.parse_args()
    setup = resolve(
        model=args.model,
        hardware=args.hardware,
        policy=args.policy,
        batch=args.batch,
        gamma=args.gamma,
    )
    print(
        f"{args.model} on {args.hardware}, {args.policy}, batch {args.batch}, γ={args.gamma}, "
        f"{args.iterations} iterations"
    )
    best = 0.0
    for i in range(args.repeat):
        build, wall, events, tps = run_once(setup, args.iterations, False)
        best = max(best, events / wall)
        print(
            f"run {i}: {events:,} events in {wall:.3f} s (+{build:.3f} s set-up) = "
            f"{events / wall:,.0f} events/s; wall incl. set-up {build + wall:.3f} s; "
            f"simulated {tps:,.1f} tokens/s"
        )
    print(f"best: {best:,.0f} events/s (target >= 100,000)")
    if args.trace:
        build, wall, events, _ = run_once(setup, args.iterations, True)
        print(f"with trace: {events:,} events in {wall:.3f} s = {events / wall:,.0f} events/s")


if __name__ == "__main__":
    main()
