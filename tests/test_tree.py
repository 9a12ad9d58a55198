"""Draft trees (RSD): shape, expected tokens per verification, verification cost, simulator law."""

import numpy as np
import pytest

from specmoe.errors import SpecMoEError
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import make_policy
from specmoe.inputs.setup import resolve
from specmoe.inputs.tree import level_probs, tree_size, tree_tau
from specmoe.inputs.workload import Acceptance, Routing, Workload, expected_distinct, tau
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.sim import Simulator
from specmoe.predictors.sim.routing import sample_accepted_levels, tree_layout

MIXTRAL = load_model("mixtral-8x7b")


def test_tree_size_by_hand():
    assert tree_size(3, 1) == 3  # a chain
    assert tree_size(3, 2) == 2 + 4 + 8  # full binary tree
    assert tree_size(3, 2, 1) == 2 + 2 + 2  # two chains from the root
    assert tree_size(4, 3, 2) == 3 + 9 + 9 + 9
    assert tree_layout(3, 2).tolist() == [0, 1, 3, 7, 15]
    assert tree_layout(3, 1).tolist() == [0, 1, 2, 3, 4]


def test_tree_tau_by_hand():
    a = 0.5
    b = 1 - (1 - a) ** 2  # 0.75: either of two candidates accepted
    assert tree_tau(a, 2, 2) == pytest.approx(1 + b + b * b)
    assert tree_tau(a, 3, 2, 1) == pytest.approx(1 + b + b * a + b * a * a)
    assert tree_tau(a, 0, 4) == pytest.approx(1.0)
    g = np.arange(8)
    assert np.allclose(tree_tau(0.7, g, 1), tau(0.7, g))  # width 1 is the chain
    assert level_probs(a, 3, 2, 1).tolist() == [0.75, 0.5, 0.5]


def test_wider_tree_accepts_more_at_fixed_depth():
    t = [float(tree_tau(0.6, 4, w)) for w in (1, 2, 3)]
    assert t[0] < t[1] < t[2] <= 5.0


def test_sampled_depth_follows_the_level_probabilities():
    rng = np.random.default_rng(0)
    passes = level_probs(0.6, 4, 2, 2)
    n = 200_000
    got = sample_accepted_levels(rng, passes, n)
    want = np.array([np.prod(passes[:d]) * (1 - (passes[d] if d < 4 else 0.0)) for d in range(5)])
    freq = np.bincount(got, minlength=5) / n
    assert np.allclose(freq, want, atol=4 * np.sqrt(0.25 / n))
    assert got.mean() + 1 == pytest.approx(float(tree_tau(0.6, 4, 2, 2)), abs=0.01)


def test_verification_covers_the_whole_tree():
    """Uniform routing, ondemand-like verification: the experts fetched are U(B(1+S))."""
    wl = Workload(batch=2, acceptance=Acceptance(0.5))
    an = Analytic(MIXTRAL, resolve().system, wl)
    pol = make_policy("eagle", gamma=3, tree_width=2)
    r = an.evaluate(pol)
    p = Routing().inclusion_probs(8, 2, 1)[0]
    u = float(expected_distinct(p, 2 * (1 + 14)))
    assert float(r.h2d_bytes_per_iteration) == pytest.approx(32 * u * MIXTRAL.expert_bytes)
    assert float(r.tokens_per_iteration) == pytest.approx(2 * float(tree_tau(0.5, 3, 2)))


@pytest.mark.parametrize(
    "kw",
    [
        {"policy": "specmoe", "draft_experts": 2, "tree_width": 3},
        {"policy": "specmoe", "draft_experts": 1, "tree_width": 3, "tree_levels": 1},
        {"policy": "eagle", "tree_width": 3},
        {"policy": "spmoe", "tree_width": 2},
    ],
)
def test_tree_agrees_with_the_simulator_where_exact(kw):
    fixed = Routing(
        kind="empirical", probs=((1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),), source="test"
    )
    setup = resolve(batch=128, gamma=3, routing=fixed, acceptance=Acceptance(0.0), **kw)
    sim = Simulator(setup, iterations=8, seed=0).run()
    an = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    assert sim.tokens_per_s == pytest.approx(float(an.tokens_per_s), rel=0.01)
    assert sim.breakdown["draft"] == pytest.approx(float(an.breakdown["draft"]), rel=0.01)


def test_simulated_tree_acceptance_matches_the_formula():
    setup = resolve(
        policy="specmoe",
        batch=64,
        gamma=3,
        draft_experts=2,
        tree_width=2,
        acceptance=Acceptance(0.6),
    )
    sim = Simulator(setup, iterations=150, seed=1).run()
    want = float(tree_tau(0.6, 3, 2))
    se = 1.2 / np.sqrt(64 * 150)  # τ's spread per sequence is below 1.2
    assert sim.tokens_per_verification == pytest.approx(want, abs=4 * se)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"policy": "ondemand", "tree_width": 2}, "tree_width=2"),
        ({"policy": "eagle", "gamma": 16, "tree_width": 4}, "draft tokens per sequence"),
        ({"policy": "specmoe", "tree_width": 0}, "tree_width=0"),
    ],
)
def test_bad_trees_name_the_field(kw, match):
    with pytest.raises(SpecMoEError, match=match):
        make_policy(**{"name": kw.pop("policy"), **kw})


def test_sweep_axes_reach_trees_and_routing_modifiers():
    from specmoe.planning.sweep import run_sweep

    grid = {
        "name": "t",
        "engine": "analytic",
        "axes": {
            "model": ["mixtral-8x7b"],
            "hardware": ["h100-pcie"],
            "policy": ["specmoe"],
            "batch": [4],
            "gamma": [3],
            "draft_experts": [2],
            "tree_width": [1, 2],
            "alpha": [0.6],
            "routing": ["zipf:1.0", "zipf:1.0+rice:0,1@4"],
        },
    }
    t = run_sweep(grid, jobs=1)
    for w, per_seq in zip(t["tree_width"], t["tokens_per_iteration"] / 4, strict=True):
        assert per_seq == pytest.approx(float(tree_tau(0.6, 3, int(w))))
    chain = t["tree_width"] == 1
    by_routing = dict(zip(t["routing"][chain], t["h2d_bytes_per_token"][chain], strict=True))
    assert by_routing["zipf:1.0+rice:0,1@4"] < by_routing["zipf:1.0"]
