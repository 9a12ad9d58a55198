"""Tests that fail when the model is wrong: hand-computed values on small cases, the two planning
bugs as regressions, and one test per known surviving mutant (experiments/reports/mutation.md)."""

import numpy as np
import pytest

from specmoe.costs.ops import CostModel, CostParams
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import make_policy
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import Acceptance, Routing, Workload, tau
from specmoe.planning import search
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.sim.simulator import Simulator

MIXTRAL = load_model("mixtral-8x7b")
H100 = load_system("h100-pcie")
US = 1e-6


def _with_link(system, h2d_gbps):
    return system.model_copy(update={"link": system.link.model_copy(update={"h2d_gbps": h2d_gbps})})


# ---- the two planning bugs ---------------------------------------------------------------------


def test_tau_differs_per_draft_expert_count_when_alpha_does():
    """A measured α per N must price each N with its own τ (bug: every N got the default N's α)."""
    acc = Acceptance(alpha=0.5, alpha_by_draft_experts=((1, 0.3), (2, 0.5), (4, 0.8)))
    wl = Workload(batch=8, acceptance=acc)
    r = Analytic(MIXTRAL, H100, wl).evaluate(
        make_policy("specmoe", gamma=4, draft_experts=2), gamma=4, draft_experts=np.array([1, 2, 4])
    )
    per_seq = r.tokens_per_iteration / 8
    assert per_seq == pytest.approx(tau(np.array([0.3, 0.5, 0.8]), 4))


def test_plan_labels_alpha_and_tau_consistently_for_measured_acceptance():
    p = search.plan(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        batch=64,
        acceptance="measured:tiny",
        gammas=[4],
        draft_experts=[1, 2, 4],
        policies=("specmoe",),
        confirm="analytic",
        explain=False,
    )
    for c in p["candidates"]:
        assert c["tokens_per_iteration"] / 64 == pytest.approx(float(tau(c["alpha"], 4)))
    assert len({round(c["tokens_per_iteration"], 6) for c in p["candidates"]}) == 3


@pytest.mark.parametrize(
    "model,hardware,batch",
    [
        ("mixtral-8x7b", "h100-pcie", 64),
        ("mixtral-8x7b", "h100-pcie", 8),
        ("qwen3-30b-a3b", "l40s", 16),
    ],
)
def test_zero_acceptance_never_picks_speculation_over_caching(model, hardware, batch):
    """With α = 0 a draft is never accepted: speculating can only cost, at equal memory rules."""
    p = search.plan(
        model=model,
        hardware=hardware,
        batch=batch,
        acceptance=0.0,
        confirm="analytic",
        policies=("ondemand", "overlap", "caching", "specmoe"),
        explain=False,
    )
    assert not p["best"]["speculation"]
    spec = [c for c in p["candidates"] if c["fits"] and c["policy"] == "specmoe" and c["gamma"] > 0]
    caching = p["best_by_policy"]["caching"]["tokens_per_s"]
    assert max(c["tokens_per_s"] for c in spec) <= caching


# ---- analytic overlap: layer 0's fetch is never hidden -------------------------------------------


def test_overlap_exposes_exactly_the_first_layers_fetch_when_compute_hides_the_rest():
    """A 1000× faster link hides every prefetch behind compute, except the first MoE layer's,
    which has nothing to run behind: h2d time = one layer's on-demand fetch, by hand."""
    sys_fast = _with_link(H100, H100.link.h2d_gbps * 1000)
    wl = Workload(batch=1, routing=Routing(), acceptance=Acceptance(0.0))
    r = Analytic(MIXTRAL, sys_fast, wl).evaluate(make_policy("overlap"))
    one_layer = CostModel(MIXTRAL, sys_fast).expert_fetch(MIXTRAL.top_k)
    assert float(r.breakdown["h2d"]) == pytest.approx(float(one_layer), rel=1e-9)
    assert float(r.breakdown["h2d"]) > 0


# ---- analytic specmoe: a random draft set is not a hot one ---------------------------------------


def test_random_draft_set_fetches_the_chance_share_of_needed_experts():
    """Random resident set: missing = U(T)·(1 − N/E) exactly; a hot set under skew misses fewer."""
    wl = Workload(batch=4, routing=Routing(kind="zipf", zipf_s=1.2), acceptance=Acceptance(0.5))
    an = Analytic(MIXTRAL, H100, wl)
    g, n = 3, 2
    rand = an.evaluate(make_policy("specmoe", gamma=g, draft_experts=n, draft_set="random"))
    hot = an.evaluate(make_policy("specmoe", gamma=g, draft_experts=n, draft_set="hot"))
    distinct, _ = an.counts.distinct_and_missing(np.array(4.0 * (g + 1)), 0)
    expected = MIXTRAL.num_moe_layers * float(distinct) * (1 - n / MIXTRAL.num_experts)
    assert float(rand.h2d_bytes_per_iteration) == pytest.approx(expected * MIXTRAL.expert_bytes)
    assert float(hot.h2d_bytes_per_iteration) < float(rand.h2d_bytes_per_iteration)


# ---- costs: hand-computed op times ---------------------------------------------------------------


def test_attention_reads_each_sequences_kv_once_however_many_positions_it_verifies():
    """Memory-bound scores: time = fixed + B·ctx·kv_bytes / (bw·η), the same for 1 or 5
    positions."""
    p = CostParams(kernel_overhead_us=3.0, attn_eff=0.5)
    c = CostModel(MIXTRAL, H100, p)
    b, ctx = 4, 1000.0
    kv = b * ctx * MIXTRAL.kv_bytes_per_token_per_layer
    by_hand = 3.0 * US + kv / (H100.gpu.hbm_bw_gbps * 1e9 * 0.5)
    assert float(c.attention_scores(b, b, ctx)) == pytest.approx(by_hand, rel=1e-9)
    assert float(c.attention_scores(5 * b, b, ctx)) == pytest.approx(by_hand, rel=1e-9)


def test_expert_ffn_pays_two_kernel_overheads_and_one_per_expert_overhead():
    """experts(t, d) = 2·kernel + d·expert_overhead + max(FLOPs/peak, bytes/bw), by hand."""
    p = CostParams(kernel_overhead_us=7.0, expert_overhead_us=2.0)
    c = CostModel(MIXTRAL, H100, p)
    m = MIXTRAL
    tokens, distinct = 3, 2
    flops = tokens * m.expert_flops_per_token
    act = tokens * (2 * m.hidden_size + 2 * m.expert_intermediate_size) * m.dtype_bytes
    nbytes = distinct * m.expert_bytes + act
    peak = c.peak_flops * tokens / distinct / (tokens / distinct + 0.0)
    roof = max(flops / peak, nbytes / c.hbm_bw)
    by_hand = 2 * 7.0 * US + distinct * 2.0 * US + roof
    assert float(c.experts(tokens, distinct)) == pytest.approx(by_hand, rel=1e-9)


# ---- simulator SpecMoE: HotTemporal follows the last verification --------------------------------


def test_hottemporal_draft_set_becomes_the_most_used_experts_of_the_last_verification():
    setup = resolve(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        policy="specmoe",
        batch=4,
        gamma=2,
        draft_experts=2,
        acceptance=0.5,
    )
    sim = Simulator(setup, iterations=1, seed=0)
    pol = sim.pol
    counts = np.zeros((sim.L, sim.E), dtype=int)
    counts[:, 5] = 9
    counts[:, 7] = 4
    counts[:, 1] = 1
    pol.after(counts, "verify")
    expected = np.zeros((sim.L, sim.E), dtype=bool)
    expected[:, [5, 7]] = True
    assert (pol.slots.resident == expected).all()
    pol.after(np.zeros_like(counts), "draft")  # drafting changes nothing
    assert (pol.slots.resident == expected).all()


# ---- planner: the simulator's confirmation decides -----------------------------------------------


def test_final_choice_follows_the_simulators_ranking(monkeypatch):
    """A simulator that reverses the analytic ranking must change the answer."""

    def reversed_run(setup, candidate, **kw):
        return {"tokens_per_s": 1e6 / candidate["tokens_per_s"]}

    monkeypatch.setattr(search, "simulator", lambda: (object(), ""))
    monkeypatch.setattr(
        search, "simulate_candidate", lambda fn, setup, c, **kw: reversed_run(setup, c)
    )
    p = search.plan(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        batch=64,
        confirm="sim",
        policies=("ondemand", "caching"),
        explain=False,
    )
    analytic_best = max((c for c in p["candidates"] if c["fits"]), key=lambda c: c["tokens_per_s"])
    assert p["engine"] == "analytic+sim"
    assert p["best"]["policy"] != analytic_best["policy"]


# ---- fate's shallow-favouring cache split, by hand -----------------------------------------------


@pytest.mark.parametrize(
    "total, layers, cap, expected",
    [
        (10, 4, 8, [4, 3, 2, 1]),  # shares ∝ L − l exactly
        (7, 4, 8, [3, 3, 1, 0]),  # floor([2.8, 2.1, 1.4, 0.7]), then the remainder shallow first
        (9, 4, 3, [3, 3, 3, 0]),  # a full layer's share goes to the deeper ones
        (20, 4, 3, [3, 3, 3, 3]),  # more slots than fit: every layer full
        (0, 4, 3, [0, 0, 0, 0]),
    ],
)
def test_shallow_first_split(total, layers, cap, expected):
    from specmoe.predictors.sim.policies import shallow_first

    assert shallow_first(total, layers, cap).tolist() == expected


def test_device_to_host_copies_by_hand():
    """d2h: per-copy setup plus bytes over the link's D2H bandwidth × efficiency (× pageable)."""
    p = CostParams(link_eff=0.8, pageable_eff=0.5, transfer_setup_us=4.0)
    c = CostModel(MIXTRAL, H100, p)
    bw = H100.link.d2h_gbps * 1e9
    assert float(c.d2h(1e9, copies=3)) == pytest.approx(3 * 4.0 * US + 1e9 / (bw * 0.8))
    assert float(c.d2h(1e9, pinned=False)) == pytest.approx(4.0 * US + 1e9 / (bw * 0.4))
