"""Simulator: agreement with the analytic model where it is exact, determinism, monotone policies,
bad input, result keys."""

import pytest

import specmoe
from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import POLICIES
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import Acceptance, Routing
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.sim import SimOptions, Simulator, simulate

# Every token of every layer uses experts 0 and 1: distinct experts are exactly 2, no variance.
FIXED = Routing(kind="empirical", probs=((1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),), source="test")
ZIPF = Routing(kind="zipf", zipf_s=1.2)


def _both(iterations=12, seed=0, **kw):
    setup = resolve(**kw)
    sim = Simulator(setup, iterations=iterations, seed=seed).run()
    an = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    return sim, an


@pytest.mark.parametrize(
    "kw",
    [
        dict(policy="ondemand", batch=16, routing=FIXED),
        dict(policy="ondemand", batch=64),  # uniform: all 8 used
        dict(policy="caching", batch=32, routing=FIXED),
        dict(policy="cpu", batch=8, routing=FIXED),
        dict(
            policy="specmoe",
            batch=32,
            gamma=4,
            draft_experts=1,
            routing=FIXED,
            acceptance=Acceptance(alpha=0.0),
        ),
        dict(policy="specmoe", batch=8, gamma=0, draft_experts=1, routing=FIXED),
    ],
)
def test_agrees_with_analytic_where_it_is_exact(kw):
    sim, an = _both(**kw)
    assert sim.tokens_per_s == pytest.approx(float(an.tokens_per_s), rel=0.01)
    assert sim.h2d_bytes_per_token == pytest.approx(
        float(an.h2d_bytes_per_token), rel=0.01, abs=1.0
    )
    for k, v in an.breakdown.items():
        assert sim.breakdown[k] == pytest.approx(float(v), rel=0.01, abs=1e-6), k


def test_breakdown_adds_up_to_the_iteration():
    for policy, kw in (
        ("specmoe", dict(gamma=3)),
        ("cpu", {}),
        ("overlap", {}),
        ("eagle", dict(gamma=2)),
    ):
        r = simulate(policy=policy, batch=8, iterations=6, routing=ZIPF, **kw)
        assert sum(r.breakdown.values()) * 1e3 == pytest.approx(r.iteration_ms, rel=1e-6), policy


def test_same_seed_same_result_other_seed_differs():
    kw = dict(policy="specmoe", batch=8, gamma=4, iterations=8, routing=ZIPF)
    a, b, c = simulate(seed=3, **kw), simulate(seed=3, **kw), simulate(seed=4, **kw)
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k not in ("wall_s", "events_per_s")}
    assert strip(a) == strip(b)
    assert a.tokens != c.tokens or a.h2d_bytes_per_token != c.h2d_bytes_per_token


@pytest.mark.parametrize("hit_rate", [1.0, 0.5])
def test_overlap_never_slower_than_ondemand(hit_rate):
    for model, batch, routing in (
        ("mixtral-8x7b", 1, ZIPF),
        ("mixtral-8x7b", 32, None),
        ("deepseek-v2-lite", 4, ZIPF),
    ):
        kw = dict(model=model, batch=batch, routing=routing, iterations=4, seed=1)
        serial = simulate(policy="ondemand", **kw)
        over = simulate(policy="overlap", prefetch_hit_rate=hit_rate, **kw)
        assert over.tokens_per_s >= serial.tokens_per_s * (1 - 1e-9), (model, batch)
        assert over.bytes["h2d"] == serial.bytes["h2d"]


def test_more_cache_slots_never_fetch_more():
    moved = [
        simulate(policy="caching", batch=4, resident_experts=r, iterations=10, routing=ZIPF).bytes[
            "h2d"
        ]
        for r in (0, 2, 4, 6, 8)
    ]
    assert all(a >= b for a, b in zip(moved, moved[1:]))
    assert moved[0] > moved[2] and moved[-1] == 0.0


def test_every_policy_runs_and_reports():
    for name in POLICIES:
        kw = dict(gamma=3) if name in ("specmoe", "spmoe", "moespec", "eagle") else {}
        if name == "moespec":
            kw["expert_budget"] = 4
        r = simulate(policy=name, batch=8, iterations=3, routing=ZIPF, **kw)
        assert r.tokens_per_s > 0 and r.events > 0, name
        if kw.get("gamma"):
            assert 1.0 <= r.tokens_per_verification <= 4.0


def test_speculative_policies_effects():
    kw = dict(batch=16, gamma=4, iterations=6, routing=ZIPF, seed=2)
    eagle = simulate(policy="eagle", **kw)
    budget = simulate(policy="moespec", expert_budget=2, **kw)
    assert budget.bytes["h2d"] < eagle.bytes["h2d"]  # fewer experts verified, fewer fetched
    sp = simulate(policy="spmoe", prefetch_hit_rate=1.0, **kw)
    assert sp.breakdown["h2d"] < eagle.breakdown["h2d"]  # prefetch during drafting hides copies
    off = simulate(policy="specmoe", spec_min_batch=32, **kw)  # batch 16 < 32: no speculation
    assert off.tokens_per_verification is None and off.tokens_per_iteration == 16


def test_specmoe_drafting_fetches_nothing():
    r = simulate(policy="specmoe", batch=8, gamma=3, draft_experts=8, iterations=4, trace=True)
    assert r.bytes["h2d"] == 0.0  # all experts resident
    r = simulate(
        policy="specmoe", batch=8, gamma=3, draft_experts=2, iterations=4, trace=True, routing=ZIPF
    )
    assert all(e["phase"] != "draft" for e in r.trace_events if e["cat"] == "h2d")


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(policy="specmoe", draft_experts=9), "draft_experts"),
        (dict(policy="overlap", prefetch_hit_rate=1.5), "prefetch_hit_rate"),
        (dict(policy="moespec", gamma=3, expert_budget=12), "expert_budget"),
        (dict(policy="caching", resident_experts=-1), "resident_experts"),
        (dict(policy="caching", lru_slots=2.5), "lru_slots"),
        (dict(iterations=0), "iterations"),
        (dict(serving=True, rate=-2.0), "rate"),
        (dict(serving=True, rate=1.0, requests=0), "requests"),
        (dict(arrivals=[]), "arrivals"),
    ],
)
def test_bad_input_names_the_field(kw, field):
    with pytest.raises(SpecMoEError, match=field):
        simulate(batch=4, **{"iterations": 2, **kw})


def test_bad_options_name_the_field():
    with pytest.raises(SpecMoEError, match="pattern_orders"):
        SimOptions(pattern_orders=0)


def test_result_has_predict_keys_plus_events():
    r = simulate(policy="specmoe", batch=8, gamma=3, iterations=3).to_dict()
    p = specmoe.predict(policy="specmoe", batch=8, gamma=3)
    assert set(p) - {"reason"} <= set(r)
    assert set(p["breakdown"]) <= set(r["breakdown"])
    assert r["events"] > 0 and r["wall_s"] > 0 and r["source"] == "sim"
    assert set(r["tpot_ms_percentiles"]) == {"p50", "p90", "p99"}
    assert 0.0 <= r["utilisation"]["gpu"] <= 1.0 and 0.0 <= r["utilisation"]["h2d"] <= 1.0


def test_ssd_share_is_read_before_each_copy():
    from specmoe.inputs.hardware import load_system

    system = load_system("h100-pcie", host="workstation-ddr5")  # 96 GB DRAM: part of 8x22B on SSD
    setup = resolve(
        model="mixtral-8x22b", hardware=system, policy="ondemand", batch=2, routing=FIXED
    )
    r = Simulator(setup, iterations=3).run()
    an = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    assert r.bytes["ssd"] > 0 and r.utilisation["ssd"] > 0
    assert r.tokens_per_s == pytest.approx(float(an.tokens_per_s), rel=0.01)  # SSD then H2D, serial


def test_temporal_reuse_helps_the_lru_cache():
    def hit(reuse):
        routing = Routing(kind="zipf", zipf_s=0.5, temporal_reuse=reuse)
        return simulate(
            policy="caching",
            batch=1,
            resident_experts=0,
            lru_slots=64,
            iterations=30,
            routing=routing,
        ).cache_hit_rate

    assert hit(0.8) > hit(0.0) + 0.2


def test_workload_system_and_calibrated_params():
    from specmoe.costs.ops import CostModel, CostParams
    from specmoe.inputs.hardware import load_system
    from specmoe.inputs.models import load_model
    from specmoe.inputs.policies import make_policy
    from specmoe.inputs.workload import Workload

    system, model = load_system("h100-pcie", ideal=True), load_model("mixtral-8x7b")
    wl = Workload(
        batch=8, prompt_len=128, output_len=64, routing=FIXED, acceptance=Acceptance(alpha=0.0)
    )
    slow = CostParams(link_eff=0.5, kernel_overhead_us=5.0)
    pol = make_policy("ondemand")
    r = simulate(model=model, system=system, workload=wl, policy=pol, params=slow, iterations=5)
    an = Analytic(model, system, wl, CostModel(model, system, slow)).evaluate(pol)
    assert r.iteration_s == pytest.approx(float(an.iteration_s), rel=0.01)
    fast = simulate(model=model, system=system, workload=wl, policy=pol, iterations=5)
    assert r.iteration_s > 1.8 * fast.iteration_s
