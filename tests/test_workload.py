import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specmoe.errors import SpecMoEError
from specmoe.inputs.workload import (
    Acceptance,
    Routing,
    Workload,
    alpha_from_tau,
    expected_distinct,
    parse_acceptance,
    parse_routing,
    published_acceptance,
    tau,
)


def test_tau_closed_form_matches_series():
    for a in (0.0, 0.3, 0.8, 0.95):
        for g in range(12):
            assert tau(a, g) == pytest.approx(sum(a**i for i in range(g + 1)))


def test_tau_alpha_zero_gives_one_token():
    assert np.all(tau(0.0, np.arange(17)) == 1.0)


@given(st.floats(0.0, 0.99), st.integers(1, 16))
def test_alpha_from_tau_inverts(a, g):
    assert alpha_from_tau(float(tau(a, g)), g) == pytest.approx(a, abs=1e-6)


def test_published_acceptance_reproduces_paper_tau():
    # SpecMoE arXiv 2604.10152, NLLB-MoE γ=10: τ = 6.812 / 7.220 / 7.265
    for name, t in (("random", 6.812), ("hot", 7.220), ("hottemporal", 7.265)):
        assert float(published_acceptance(name).tau(10)) == pytest.approx(t, rel=1e-6)


@given(st.integers(2, 256), st.integers(1, 8), st.floats(0.0, 2.5), st.integers(1, 5000))
@settings(max_examples=60)
def test_distinct_experts_bounds_and_monotone(E, k, s, n):
    k = min(k, E)
    p = Routing(kind="zipf", zipf_s=s).inclusion_probs(E, k, 1)[0]
    assert p.sum() == pytest.approx(k) and p.max() <= 1 + 1e-12
    u = expected_distinct(p, [n, n + 1, 2 * n])
    assert min(k, E) - 1e-9 <= u[0] <= E + 1e-9
    assert u[0] <= u[1] + 1e-12 <= u[2] + 2e-12


def test_uniform_matches_formula():
    E, k = 8, 2
    p = Routing().inclusion_probs(E, k, 1)[0]
    for n in (1, 3, 64):
        assert expected_distinct(p, n) == pytest.approx(E * (1 - (1 - k / E) ** n))


def test_empirical_resampled_onto_other_expert_counts():
    probs = np.array([[0.5, 0.4, 0.3, 0.3, 0.2, 0.1, 0.1, 0.1]]) * 2 / 2.0
    r = Routing(kind="empirical", probs=tuple(map(tuple, probs)))
    same = r.inclusion_probs(8, 2, 3)
    assert same.shape == (3, 8) and np.allclose(same[0], np.sort(probs[0])[::-1])
    more = r.inclusion_probs(64, 4, 2)
    assert (
        more.shape == (2, 64) and np.allclose(more.sum(1), 4) and np.all(np.diff(more[0]) <= 1e-12)
    )


def test_tau_table_overrides_alpha():
    acc = Acceptance(alpha=0.5, tau_table=((1, 1.9), (2, 2.7)))
    assert float(acc.tau(2)) == pytest.approx(2.7) and float(acc.tau(0)) == 1.0


@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda: Acceptance(alpha=1.0), "alpha=1.0"),
        (lambda: Acceptance(alpha=-0.1), "alpha"),
        (lambda: Workload(batch=0), "batch=0"),
        (lambda: Workload(prompt_len=-3), "prompt_len"),
        (lambda: Routing(kind="pareto"), "routing kind"),
        (lambda: parse_acceptance("lots"), "acceptance="),
        (lambda: parse_routing("zipf:x"), "zipf"),
        (lambda: alpha_from_tau(12.0, 10), "tau=12"),
    ],
)
def test_bad_input_names_the_field(bad, match):
    with pytest.raises(SpecMoEError, match=match):
        bad()
