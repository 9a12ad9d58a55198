"""Planner: picks near the exhaustive best, explains itself, and the online γ controller adapts."""

import itertools

import numpy as np
import pytest

from specmoe.errors import SpecMoEError
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import Acceptance, Routing, Workload
from specmoe.planning import search as planner
from specmoe.planning.search import GammaController, compare_with_measured, plan, search

CASES = list(
    itertools.product(
        [
            ("mixtral-8x7b", "h100-pcie"),
            ("qwen3-30b-a3b", "l40s"),
            ("nllb-moe-54b", "specmoe-paper-h100"),
            ("olmoe-1b-7b", "a100-pcie-40gb"),
        ],
        [1, 8, 64, 256],
        [None, 0.55],
    )
)


def _exhaustive_analytic(model, hardware, batch, acceptance, **kw):
    """Every policy, every N in 1..E, γ in 0..24: the best analytic throughput."""
    setup = resolve(
        model=model, hardware=hardware, batch=batch, policy="ondemand", acceptance=acceptance, **kw
    )
    E = setup.model.num_experts
    cands = search(setup, gammas=range(25), draft_experts=range(1, E + 1), refine=False)
    return max(c["tokens_per_s"] for c in cands if c["fits"])


@pytest.mark.parametrize("pair,batch,acceptance", CASES)
def test_pick_reaches_97_percent_of_exhaustive_analytic(pair, batch, acceptance):
    model, hardware = pair
    p = plan(
        model=model,
        hardware=hardware,
        batch=batch,
        acceptance=acceptance,
        confirm="analytic",
        explain=False,
    )
    best = _exhaustive_analytic(model, hardware, batch, acceptance)
    assert p["best"]["tokens_per_s"] >= 0.97 * best
    assert p["engine"] == "analytic" and "analytic only" in p["notes"][0]


SIM_CASES = [
    ("mixtral-8x7b", "h100-pcie", 32, 0.7),
    ("nllb-moe-54b", "specmoe-paper-h100", 256, None),
]


@pytest.mark.parametrize("model,hardware,batch,acceptance", SIM_CASES)
def test_pick_reaches_97_percent_of_exhaustive_simulation(model, hardware, batch, acceptance):
    """The simulator is the reference: simulate a grid of every policy and γ × N, compare."""
    run, why = planner.simulator()
    if run is None:
        pytest.skip(why)
    opts = {"iterations": 12, "seed": 0}
    p = plan(
        model=model,
        hardware=hardware,
        batch=batch,
        acceptance=acceptance,
        sim_options=opts,
        policies=("ondemand", "caching", "specmoe"),
    )
    assert p["engine"] == "analytic+sim"
    setup = resolve(
        model=model, hardware=hardware, batch=batch, policy="ondemand", acceptance=acceptance
    )
    E = setup.model.num_experts
    grid = [("ondemand", 0, 0), ("caching", 0, 0)] + [
        ("specmoe", g, n) for g in (0, 4, 8, 12, 16) for n in sorted({1, 4, E // 4, E})
    ]
    sims = []
    for pol, g, n in grid:
        c = {"policy": pol, "gamma": g, "draft_experts": n}
        d = planner.simulate_candidate(run, setup, c, **opts)
        if d["fits"]:
            sims.append(d["tokens_per_s"])
    assert p["best"]["sim_tokens_per_s"] >= 0.97 * max(sims)


def test_without_simulator_plan_says_analytic_only(monkeypatch):
    monkeypatch.setattr(planner, "simulator", lambda: (None, "simulator not importable (test)"))
    p = plan(model="mixtral-8x7b", hardware="h100-pcie", batch=16)
    assert p["engine"] == "analytic" and "not importable" in p["notes"][0]
    assert "sim_tokens_per_s" not in p["best"]
    with pytest.raises(SpecMoEError, match="confirm='sim'"):
        plan(model="mixtral-8x7b", hardware="h100-pcie", batch=16, confirm="sim")


def test_plan_keeps_api_keys_and_best_is_the_max():
    import specmoe

    p = specmoe.plan(
        model="mixtral-8x7b", hardware="h100-pcie", batch=64, gammas=range(7), confirm="analytic"
    )
    assert {"best", "best_by_policy", "candidates"} <= set(p)
    assert {"policy", "gamma", "draft_experts", "tokens_per_s"} <= set(p["best"])
    assert p["best"]["tokens_per_s"] == max(c["tokens_per_s"] for c in p["candidates"] if c["fits"])
    assert set(p["best_by_policy"]) == {"ondemand", "overlap", "caching", "cpu", "specmoe"}


def test_refinement_adds_n_between_the_doubling_grid():
    setup = resolve(model="qwen3-30b-a3b", hardware="h100-pcie", batch=256, policy="ondemand")
    coarse = {c["draft_experts"] for c in search(setup, ("specmoe",), range(1, 9), refine=False)}
    fine = {c["draft_experts"] for c in search(setup, ("specmoe",), range(1, 9), refine=True)}
    assert coarse == {1, 2, 4, 8, 16, 32, 64, 128} and fine > coarse and len(fine - coarse) <= 8


def test_explanation_names_pcie_when_only_fetching_policies_compete():
    p = plan(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        batch=64,
        policies=("ondemand",),
        confirm="analytic",
    )
    ex = p["explanation"]
    assert ex["limited_by"] == "pcie" and ex["time_shares"]["h2d"] > 0.5
    assert ex["sensitivity"]["pcie"] > 1.5 > ex["sensitivity"]["compute"]
    assert any("PCIe" in line for line in ex["summary"])


def test_speculation_off_at_batch_1_with_a_reason_and_on_at_large_batch():
    kw = {
        "model": "nllb-moe-54b",
        "hardware": "specmoe-paper-h100",
        "policies": ("ondemand", "caching", "specmoe"),
        "resident_experts": 13,
        "confirm": "analytic",
        "draft_experts": [2, 4, 8, 16],
    }
    small = plan(batch=1, **kw)
    assert small["best"]["gamma"] == 0 and not small["explanation"]["speculation"]["on"]
    assert small["explanation"]["speculation"]["why"].startswith("speculation off")
    large = plan(batch=256, **kw)
    assert large["best"]["policy"] == "specmoe" and large["best"]["gamma"] > 0
    why = large["explanation"]["speculation"]["why"]
    assert why.startswith("speculation on") and "tokens per verification" in why
    assert "acceptance" in large["explanation"]["sensitivity"]


def test_plan_rejects_bad_input():
    with pytest.raises(SpecMoEError, match="confirm="):
        plan(confirm="maybe")
    with pytest.raises(SpecMoEError, match="draft_experts=9"):
        plan(model="mixtral-8x7b", draft_experts=[9], confirm="analytic")
    with pytest.raises(SpecMoEError, match="policy='nope'"):
        plan(policies=("nope",), confirm="analytic")


def test_plan_searches_gamma_for_a_separate_draft_model():
    p = plan(
        batch=64, policies=("eagle", "spmoe"), gammas=range(5), confirm="analytic", acceptance=0.8
    )
    gammas = {c["gamma"] for c in p["candidates"] if c["policy"] == "spmoe"}
    assert gammas == {0, 1, 2, 3, 4} and p["best"]["gamma"] > 0


# ---- measured γ ------------------------------------------------------------------------------


def test_compare_with_measured():
    pts = [(0, 100.0), (2, 180.0), (4, 210.0), (8, 200.0)]
    r = compare_with_measured(pts, 4)
    assert (
        r["best_gamma"] == 4 and r["ratio"] == 1.0 and r["meets_target"] and not r["interpolated"]
    )
    r = compare_with_measured(pts, 6)  # interpolated between 210 and 200
    assert (
        r["interpolated"]
        and r["planned_tokens_per_s"] == pytest.approx(205.0)
        and r["meets_target"]
    )
    r = compare_with_measured(pts, 2)
    assert r["ratio"] == pytest.approx(180 / 210) and not r["meets_target"]
    with pytest.raises(SpecMoEError, match="outside"):
        compare_with_measured(pts, 12)
    with pytest.raises(SpecMoEError, match="at least one"):
        compare_with_measured([], 1)


# ---- the online controller -------------------------------------------------------------------


def _controller(batch=128, alpha=0.8, **kw):
    wl = Workload(batch=batch, acceptance=Acceptance(alpha=alpha, source="test"), routing=Routing())
    return GammaController("mixtral-8x7b", "h100-pcie", wl, **kw)


def test_controller_starts_at_the_planners_gamma():
    ctl = _controller()
    p = plan(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        batch=128,
        acceptance=0.8,
        policies=("specmoe",),
        draft_experts=[ctl.draft_experts],
        confirm="analytic",
        explain=False,
    )
    assert ctl.gamma == p["best"]["gamma"] > 0
    assert ctl.alpha == pytest.approx(0.8)


def _feed(ctl, alpha, steps, rng, batch=16):
    for _ in range(steps):
        g = ctl.gamma
        if g == 0:
            ctl.observe(0, 0)
            continue
        # accepted = leading successes of g Bernoulli(α) draws, per sequence
        draws = rng.random((batch, g)) < alpha
        accepted = np.where(draws.all(axis=1), g, np.argmin(draws, axis=1))
        ctl.observe(accepted, np.full(batch, g))


def test_controller_follows_measured_acceptance_and_estimates_alpha():
    rng = np.random.default_rng(0)
    ctl = _controller(alpha=0.8)
    g0 = ctl.gamma
    _feed(ctl, 0.95, 40, rng)
    assert ctl.alpha == pytest.approx(0.95, abs=0.02) and ctl.gamma > g0
    assert ctl.predicted()[ctl.gamma] >= ctl.predicted().max() / (1 + ctl.min_gain)
    ctl2 = _controller(alpha=0.8)
    _feed(ctl2, 0.3, 40, rng)
    assert ctl2.alpha == pytest.approx(0.3, abs=0.04) and ctl2.gamma < g0


def test_controller_best_gamma_grows_with_alpha():
    ctl = _controller()
    gs = [ctl.best_gamma(a) for a in np.linspace(0.0, 0.98, 12)]
    assert gs == sorted(gs) and gs[0] <= 1 and gs[-1] >= 8


def test_controller_hysteresis_and_decay():
    rng = np.random.default_rng(1)
    sticky = _controller(alpha=0.8, min_gain=10.0)  # never worth switching
    g0 = sticky.gamma
    _feed(sticky, 0.3, 20, rng)
    assert sticky.gamma == g0
    forgetful = _controller(alpha=0.8, decay=0.5)
    _feed(forgetful, 0.3, 20, rng)
    _feed(forgetful, 0.95, 10, rng)  # old evidence forgotten fast
    assert forgetful.alpha > 0.9


def test_controller_turns_speculation_off_at_batch_1_and_probes():
    wl = Workload(batch=256, acceptance=Acceptance(alpha=0.9, source="test"))
    ctl = GammaController(
        "nllb-moe-54b",
        "specmoe-paper-h100",
        wl,
        draft_experts=4,
        probe_every=3,
        resident_experts=13,
    )
    assert ctl.gamma > 0
    assert ctl.set_batch(1) == 0
    answers = [ctl.observe(0, 0) for _ in range(3)]
    assert answers[:2] == [0, 0] and answers[2] > 0  # the third off iteration probes
    assert ctl.observe([0], [answers[2]]) == 0  # measured: still not worth it at batch 1


def test_controller_rejects_bad_observations():
    ctl = _controller()
    with pytest.raises(SpecMoEError, match="accepted <= drafted"):
        ctl.observe(5, 3)
    with pytest.raises(SpecMoEError, match="shape"):
        ctl.observe([1, 2], [3])
    with pytest.raises(SpecMoEError, match="batch=0"):
        ctl.set_batch(0)
    with pytest.raises(SpecMoEError, match="decay"):
        _controller(decay=0.0)
