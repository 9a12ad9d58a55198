"""Static batches: how many speculative rounds until a batch's slowest sequence is done."""
from __future__ import annotations

import numpy as np


def expected_rounds(batch: int, gamma: int, alpha: float, max_new: int, reps: int = 4000,
                    seed: int = 0) -> float:
    """Mean speculative rounds until every sequence of a static batch has max_new tokens (the first
    comes from the prefill), each round adding 1 + (leading accepted drafts, i.i.d. α) per
    sequence."""
    rng = np.random.default_rng(seed)
    length = np.ones((reps, batch))
    rounds = np.zeros(reps)
    while True:
        running = length.min(axis=1) < max_new
        if not running.any():
            return float(rounds.mean())
        ok = rng.random((reps, batch, gamma)) < alpha
        n = np.cumprod(ok, axis=2).sum(axis=2)
        length += np.where(running[:, None] & (length < max_new), n + 1, 0)
        rounds += running
