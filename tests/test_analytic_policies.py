"""spmoe, moespec, fate and eagle in the analytic model: hand-computed small cases and agreement
with the simulator where the analytic model is exact (every token uses experts 0 and 1: no
variance in the experts a pass needs; α = 0: no variance in accepted tokens)."""

import numpy as np
import pytest

from specmoe.costs.ops import prediction_costs
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import make_policy
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import Acceptance, Routing, Workload
from specmoe.predictors.analytic import Analytic, shallow_first
from specmoe.predictors.sim import Simulator

FIXED = Routing(kind="empirical", probs=((1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),), source="test")
A0 = Acceptance(alpha=0.0)
MIXTRAL = load_model("mixtral-8x7b")
L = MIXTRAL.num_moe_layers


def _both(iterations=10, **kw):
    setup = resolve(**kw)
    sim = Simulator(setup, iterations=iterations, seed=0).run()
    an = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    return setup, sim, an


# Tolerance: 1% on tokens/s and bytes (the simulator's copy engine is exact to one expert copy,
# and its decode contexts are sampled per iteration around the analytic model's mean context).
@pytest.mark.parametrize(
    "kw",
    [
        {"policy": "eagle", "gamma": 4},
        {"policy": "moespec", "gamma": 4, "expert_budget": 1},
        {"policy": "moespec", "gamma": 4},  # no budget: eagle
        {"policy": "spmoe", "gamma": 4},  # everything prefetched while drafting
        {"policy": "spmoe", "gamma": 4, "cutoff_layer": 8},  # layers 8.. on demand
        {"policy": "spmoe", "gamma": 4, "prefetch_hit_rate": 0.0},  # nothing predicted: eagle
        {"policy": "spmoe", "gamma": 4, "draft_model_ratio": 1.0},  # a draft as slow as the target
        {"policy": "fate", "gamma": 0, "resident_experts": 2},
        {"policy": "fate", "gamma": 0, "resident_experts": 1},
        {"policy": "fate", "gamma": 0},  # as many slots as fit
    ],
    ids=lambda kw: "-".join(f"{v}" for v in kw.values()),
)
def test_agrees_with_the_simulator_where_exact(kw):
    _, sim, an = _both(batch=16, routing=FIXED, acceptance=A0, **kw)
    assert sim.tokens_per_s == pytest.approx(float(an.tokens_per_s), rel=0.01)
    assert sim.h2d_bytes_per_token == pytest.approx(float(an.h2d_bytes_per_token), rel=0.01)
    for k, v in an.breakdown.items():
        assert sim.breakdown[k] == pytest.approx(float(v), rel=0.01, abs=1e-4), k


def test_spmoe_copy_bound_by_hand():
    """All 2 experts of every layer prefetched, copies much slower than compute: the copy engine
    runs back to back, so the iteration is 2L copies, then the last layer's experts and the head."""
    setup = resolve(policy="spmoe", batch=16, gamma=4, routing=FIXED, acceptance=A0)
    r = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    c = prediction_costs(MIXTRAL, setup.system)
    T = 16 * 5
    expected = 2 * L * c.expert_fetch(1) + c.experts(2 * T, 2) + c.lm_head(T)
    assert float(r.iteration_s) == pytest.approx(float(expected), rel=1e-9)


def test_moespec_budget_by_hand():
    """Budget 1 with every token on experts 0 and 1: one expert per layer fetched and computed,
    with the tokens of the kept expert only (T token-expert pairs of 2T)."""
    setup = resolve(
        policy="moespec", batch=16, gamma=4, expert_budget=1, routing=FIXED, acceptance=A0
    )
    an = Analytic(setup.model, setup.system, setup.workload)
    r = an.evaluate(setup.policy)
    c = prediction_costs(MIXTRAL, setup.system)
    T = 16 * 5
    assert float(r.h2d_bytes_per_iteration) == pytest.approx(L * MIXTRAL.expert_bytes)
    assert float(r.breakdown["expert_compute"]) == pytest.approx(
        float(L * c.experts(T, 1)), rel=1e-9
    )
    # A budget at or above the experts used changes nothing.
    wide = an.evaluate(setup.policy.with_(expert_budget=8))
    eagle = an.evaluate(setup.policy.with_(name="eagle", expert_budget=None))
    assert float(wide.iteration_s) == pytest.approx(float(eagle.iteration_s))


def test_shallow_first_by_hand():
    assert shallow_first(6, 3, 8).tolist() == [3, 2, 1]  # weights 3:2:1
    assert shallow_first(4, 3, 8).tolist() == [
        3,
        1,
        0,
    ]  # floor gives 2, 1, 0; the rest shallow first
    assert shallow_first(6, 3, 2).tolist() == [2, 2, 2]  # capped per layer
    assert shallow_first(100, 3, 8).tolist() == [8, 8, 8]


def test_fate_fetches_what_the_shallow_first_cache_misses():
    """Every token uses 2 experts: a layer with c cached experts fetches max(0, 2 − c). With 2
    slots per layer on average, caching (2 in every layer) fetches nothing; fate moves slots to
    the shallow layers, where a third slot is wasted, so deep layers fetch."""
    wl = Workload(batch=4, routing=FIXED, acceptance=A0)
    an = Analytic(MIXTRAL, resolve().system, wl)
    r = an.evaluate(make_policy("fate", resident_experts=2))
    caps = shallow_first(2 * L, L, 8)
    missing = np.maximum(0, 2 - caps).sum()
    assert caps[0] > 2 and missing > 0
    assert float(r.h2d_bytes_per_iteration) == pytest.approx(missing * MIXTRAL.expert_bytes)
    even = an.evaluate(make_policy("caching", resident_experts=2))
    assert float(even.h2d_bytes_per_iteration) == 0.0


def test_spmoe_never_slower_than_eagle_and_better_with_better_prediction():
    an = Analytic(
        MIXTRAL, resolve().system, Workload(batch=8, routing=Routing(kind="zipf", zipf_s=1.0))
    )
    pol = make_policy("spmoe", gamma=4)
    eagle = float(an.evaluate(pol.with_(name="eagle")).iteration_s)
    times = [
        float(an.evaluate(pol.with_(prefetch_hit_rate=h)).iteration_s) for h in (0.0, 0.25, 1.0)
    ]
    assert times[0] == pytest.approx(eagle)
    assert times[2] <= times[1] < times[0]  # copy-bound: once drafting is covered, h adds nothing
