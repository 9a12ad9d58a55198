"""The simulator's samplers: routing keeps the inclusion probabilities, acceptance follows τ(γ)."""

import numpy as np
import pytest

from specmoe.inputs.workload import Routing, tau
from specmoe.predictors.sim.routing import RoutingSampler, sample_accepted


def _sampler(kind="zipf", E=16, k=4, L=3, reuse=0.0, slots=32, seed=0, s=1.2):
    p = Routing(kind=kind, zipf_s=s).inclusion_probs(E, k, L)
    return p, RoutingSampler(p, k, reuse, slots, np.random.default_rng(seed))


@pytest.mark.parametrize("reuse", [0.0, 0.6])
def test_realised_inclusion_frequencies_match_p(reuse):
    p, s = _sampler(reuse=reuse)
    slots = np.arange(32)
    total, tokens = np.zeros_like(p), 0
    for _ in range(300):
        counts, pats = s.sample(slots, 3)
        s.commit(slots, pats, np.full(32, 2))
        total += counts.sum(axis=1)
        tokens += 32 * 3
    # 28,800 tokens per layer: binomial s.d. of a frequency <= 0.003 (more with reuse's correlation)
    assert np.abs(total / tokens - p).max() < 0.02
    assert total.sum(axis=1) == pytest.approx(np.full(p.shape[0], tokens * 4))


def test_every_token_gets_top_k_distinct_experts():
    for kind, E, k in (("zipf", 8, 2), ("uniform", 64, 6), ("zipf", 128, 8)):
        _, s = _sampler(kind=kind, E=E, k=k, s=2.0)
        used = s.weights.reshape(-1) > 0
        pats = s.patterns[used]
        assert all(len(set(row)) == k for row in pats.tolist())


def test_empirical_layers_keep_their_own_probabilities():
    p = np.array([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    s = RoutingSampler(p, 2, 0.0, 8, np.random.default_rng(1))
    counts, _ = s.sample(np.arange(8), 50)
    freq = counts.sum(axis=1) / 400
    assert np.array_equal(freq[0], [1.0, 1.0, 0.0, 0.0])
    assert np.abs(freq[1] - 0.5).max() < 0.08


def test_temporal_reuse_repeats_the_previous_pattern():
    def repeat_rate(reuse):
        _, s = _sampler(reuse=reuse, E=8, k=2)
        _, pats = s.sample(np.arange(32), 40)
        return np.mean(pats[:, :, 1:] == pats[:, :, :-1])

    base, reused = repeat_rate(0.0), repeat_rate(0.5)
    assert reused > base + 0.3


def test_aggregate_counts_have_the_same_marginals():
    p, s = _sampler()
    counts = s.aggregate(200_000)
    assert counts.sum(axis=1) == pytest.approx(np.full(3, 800_000))
    assert np.abs(counts / 200_000 - p).max() < 0.01


def test_accepted_length_matches_tau():
    rng = np.random.default_rng(0)
    for alpha, gamma in ((0.0, 4), (0.6, 3), (0.9, 8)):
        a = sample_accepted(rng, alpha, gamma, 100_000)
        assert a.min() >= 0 and a.max() <= gamma
        assert np.mean(a + 1) == pytest.approx(float(tau(alpha, gamma)), rel=0.01)
    assert not sample_accepted(rng, 0.9, 0, 5).any()
