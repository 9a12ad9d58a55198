"""Workload variants: RICE expert steering and Duo-LLM adaptive computation, by hand and against
the simulator where the analytic model is exact."""

import numpy as np
import pytest

from specmoe.costs.ops import CostModel
from specmoe.errors import SpecMoEError
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import make_policy
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import Acceptance, Routing, Workload, draft_coverage, parse_routing
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.sim import Simulator
from specmoe.predictors.sim.routing import RoutingSampler

MIXTRAL = load_model("mixtral-8x7b")
H100 = resolve().system
L = MIXTRAL.num_moe_layers
FIXED = ((1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),)


def test_rice_boost_by_hand():
    # E = 4, k = 1: weights (3·¼, ¼, ¼, ¼) scaled to sum 1.
    p = Routing(boost_experts=(0,), boost_factor=3.0).inclusion_probs(4, 1, 1)[0]
    assert p == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    # E = 4, k = 2: the boosted expert would exceed 1, so it is capped and the rest share 1.
    p = Routing(boost_experts=(0,), boost_factor=4.0).inclusion_probs(4, 2, 1)[0]
    assert p == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3])
    assert Routing(boost_experts=(0, 1), boost_factor=1.0).inclusion_probs(4, 2, 1)[
        0
    ] == pytest.approx([0.5] * 4)


def test_rice_on_the_hot_experts_cuts_caching_bytes():
    """Boosting the two most used experts concentrates routing: fewer distinct experts, more
    hits."""
    base = Routing(kind="zipf", zipf_s=0.8)
    steered = Routing(kind="zipf", zipf_s=0.8, boost_experts=(0, 1), boost_factor=4.0)
    pol = make_policy("caching", resident_experts=2)
    b = [
        float(
            Analytic(MIXTRAL, H100, Workload(batch=8, routing=r)).evaluate(pol).h2d_bytes_per_token
        )
        for r in (base, steered)
    ]
    assert b[1] < b[0]
    cov = [float(draft_coverage(r.inclusion_probs(8, 2, 1), 2)) for r in (base, steered)]
    assert cov[1] > cov[0]


def test_draft_coverage_by_hand():
    assert draft_coverage(np.array([[1.0, 0.5, 0.5, 0.0]]), 1) == pytest.approx(0.5)
    assert draft_coverage(np.array([[1.0, 0.5, 0.5, 0.0]]), 2) == pytest.approx(0.75)


def test_duo_shares_scale_inclusion_and_distinct_experts():
    r = Routing(kind="empirical", probs=FIXED, big_share=(0.5,))
    p = r.inclusion_probs(8, 2, 2)
    assert p[:, :2] == pytest.approx(0.5) and p.sum(axis=1) == pytest.approx([1.0, 1.0])
    an = Analytic(MIXTRAL, H100, Workload(batch=3, routing=r, acceptance=Acceptance(0.0)))
    res = an.evaluate(make_policy("ondemand"))
    u = 2 * (1 - 0.5**3)  # each of experts 0, 1 used w.p. 1 − ½³
    assert float(res.h2d_bytes_per_iteration) == pytest.approx(L * u * MIXTRAL.expert_bytes)
    assert r.module_shares(3)[1].tolist() == [0.0, 0.0, 0.0]  # the rest skip
    only_small = Routing(small_share=(0.25,))
    assert only_small.module_shares(2)[0] == pytest.approx([0.75, 0.75])


def test_small_module_time_by_hand():
    """Every token of every other layer takes a small FFN of half an expert instead of the
    experts."""
    duo = Routing(
        kind="empirical",
        probs=FIXED,
        big_share=(1.0, 0.0),
        small_share=(0.0, 1.0),
        small_module_ratio=0.5,
    )
    plain = Routing(kind="empirical", probs=FIXED)
    pol = make_policy("ondemand")
    an = Analytic(MIXTRAL, H100, Workload(batch=16, routing=duo))
    d, p = (
        an.evaluate(pol),
        Analytic(MIXTRAL, H100, Workload(batch=16, routing=plain)).evaluate(pol),
    )
    c = CostModel(MIXTRAL, H100)
    small = (L // 2) * c.small_module(16.0, 0.5)
    assert float(d.breakdown["dense"] - p.breakdown["dense"]) == pytest.approx(
        float(small), rel=1e-9
    )
    assert float(d.h2d_bytes_per_iteration) == pytest.approx(float(p.h2d_bytes_per_iteration) / 2)
    assert an.mem.small_module_bytes == pytest.approx(L * 0.5 * MIXTRAL.expert_bytes)  # resident


# Alternating layers: all tokens on the experts, or all on the small module: no variance.
ALTERNATING = Routing(
    kind="empirical",
    probs=FIXED,
    big_share=(1.0, 0.0),
    small_share=(0.0, 1.0),
    small_module_ratio=0.5,
)


@pytest.mark.parametrize(
    "kw",
    [
        {"policy": "ondemand"},
        {"policy": "caching", "resident_experts": 1},
        {"policy": "specmoe", "gamma": 3, "draft_experts": 1},
        {"policy": "eagle", "gamma": 3},
        {"policy": "moespec", "gamma": 3, "expert_budget": 1},
        {"policy": "spmoe", "gamma": 3},
    ],
    ids=lambda kw: kw["policy"],
)
def test_duo_agrees_with_the_simulator_where_exact(kw):
    setup = resolve(batch=16, routing=ALTERNATING, acceptance=Acceptance(0.0), **kw)
    sim = Simulator(setup, iterations=8, seed=0).run()
    an = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    assert sim.tokens_per_s == pytest.approx(float(an.tokens_per_s), rel=0.01)
    assert sim.h2d_bytes_per_token == pytest.approx(float(an.h2d_bytes_per_token), rel=0.01)


def test_sampler_thins_tokens_by_the_big_share():
    probs = Routing().selection_probs(8, 2, 3)
    s = RoutingSampler(
        probs, 2, 0.0, 64, np.random.default_rng(0), big_share=np.array([1.0, 0.5, 0.0])
    )
    counts, _ = s.sample(np.arange(64), 50)
    per_layer = counts.sum(axis=(1, 2)) / (64 * 50 * 2)
    assert per_layer == pytest.approx([1.0, 0.5, 0.0], abs=0.02)
    agg = s.aggregate(10_000).sum(axis=1) / (10_000 * 2)
    assert agg == pytest.approx([1.0, 0.5, 0.0], abs=0.02)


def test_parse_routing_modifiers():
    r = parse_routing("zipf:1.0+rice:0,1@4")
    assert (r.kind, r.boost_experts, r.boost_factor) == ("zipf", (0, 1), 4.0)
    r = parse_routing("uniform+duo:0.5/0.3@0.25")
    assert (r.big_share, r.small_share, r.small_module_ratio) == ((0.5,), (0.3,), 0.25)
    with pytest.raises(SpecMoEError, match="modifier"):
        parse_routing("zipf+rice:0@")
    with pytest.raises(SpecMoEError, match="big_share"):
        parse_routing("uniform+duo:0.8/0.3@0.25")
    with pytest.raises(SpecMoEError, match="boost_factor"):
        Routing(boost_experts=(0,), boost_factor=0.0)
