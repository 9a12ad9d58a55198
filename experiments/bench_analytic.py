"""Analytic-model speed: configurations per second for a large sweep on one core.

    python experiments/bench_analytic.py [--configs 1000000]

Target (DESIGN.md §11): >= 100,000 configurations/s. Prints the figure measured in this run.
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target is stated

import numpy as np

from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import make_policy
from specmoe.inputs.workload import Routing, Workload
from specmoe.predictors.analytic import Analytic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=1_000_000)
    ap.add_argument("--model", default="mixtral-8x7b")
    ap.add_argument("--hardware", default="h100-pcie")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    model, system = load_model(args.model), load_system(args.hardware)
    n = args.configs
    batch = rng.integers(1, 513, n)
    gamma = rng.integers(0, 17, n)
    draft = rng.integers(1, model.num_experts + 1, n)
    alpha = rng.uniform(0.0, 0.95, n)
    an = Analytic(model, system, Workload(routing=Routing(kind="zipf", zipf_s=0.8)))
    for name in ("ondemand", "overlap", "caching", "cpu", "specmoe"):
        pol = make_policy(name)
        t0 = time.perf_counter()
        res = an.evaluate(
            pol,
            batch=batch,
            gamma=gamma if name == "specmoe" else 0,
            draft_experts=draft if name == "specmoe" else 0,
            alpha=alpha,
        )
        dt = time.perf_counter() - t0
        print(
            f"{name:9s} {n:,} configs in {dt:.3f} s = {n / dt:,.0f} configs/s "
            f"(median {np.median(res.tokens_per_s):,.1f} tokens/s)"
        )


if __name__ == "__main__":
    main()
