"""Wrong prefetches (Policy.prefetch_precision < 1) occupy the link in the simulator as in the
analytic model."""

import pytest

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import make_policy
from specmoe.predictors.sim import simulate


def _run(precision):
    return simulate(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        policy="overlap",
        batch=1,
        iterations=40,
        seed=1,
        prefetch_hit_rate=0.8,
        prefetch_precision=precision,
    )


def test_wrong_prefetches_move_more_bytes_in_the_simulator():
    exact, wasteful = _run(1.0), _run(0.5)
    ratio = wasteful.h2d_bytes_per_token / exact.h2d_bytes_per_token
    # 31 of 32 layers prefetch 0.8 of their experts; precision 0.5 doubles those fetches: ≈ +77%
    assert 1.6 < ratio < 1.95
    assert wasteful.tokens_per_s <= exact.tokens_per_s * 1.001


def test_precision_out_of_range_is_named():
    with pytest.raises(SpecMoEError, match="prefetch_precision=0"):
        make_policy("overlap", prefetch_precision=0.0)
