import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specmoe.costs.ops import prediction_costs
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import ANALYTIC, Policy, make_policy
from specmoe.inputs.workload import Acceptance, Routing, Workload
from specmoe.predictors.analytic import Analytic

MIXTRAL = load_model("mixtral-8x7b")
H100 = load_system("h100-pcie")


def _faster(system, link_x=1.0, hbm_x=1.0):
    link = system.link.model_copy(update={"h2d_gbps": system.link.h2d_gbps * link_x})
    gpu = system.gpu.model_copy(update={"hbm_bw_gbps": system.gpu.hbm_bw_gbps * hbm_x})
    return system.model_copy(update={"link": link, "gpu": gpu})


def _run(policy, system=H100, model=MIXTRAL, workload=None, **kw):
    return Analytic(model, system, workload or Workload(batch=kw.pop("batch", 16))).evaluate(
        make_policy(policy, **kw)
    )


def test_ondemand_by_hand():
    """Batch 1, uniform routing: exactly top_k experts fetched per layer, serial with compute."""
    wl = Workload(
        batch=1, prompt_len=100, output_len=2, routing=Routing(), acceptance=Acceptance(0.0)
    )
    r = Analytic(MIXTRAL, H100, wl).evaluate(make_policy("ondemand"))
    c = prediction_costs(MIXTRAL, H100)   # what the analytic model prices with
    L, k = 32, 2
    fetch = L * c.expert_fetch(k)
    experts = L * c.experts(k, k)
    attn = L * c.attention_block(1, 1, 101.0)
    dense = L * c.router_and_shared(1) + c.lm_head(1)
    assert float(r.iteration_s) == pytest.approx(float(fetch + experts + attn + dense), rel=1e-9)
    assert float(r.h2d_bytes_per_token) == pytest.approx(L * k * 352_321_536)


@pytest.mark.parametrize("policy", ANALYTIC)
def test_breakdown_and_bytes_add_up(policy):
    kw = {"gamma": 4, "draft_experts": 2} if policy == "specmoe" else {}
    r = _run(policy, batch=32, **kw)
    assert sum(float(v) for v in r.breakdown.values()) == pytest.approx(
        float(r.iteration_s), rel=1e-9
    )
    assert float(r.h2d_bytes_per_token * r.tokens_per_iteration) == pytest.approx(
        float(r.h2d_bytes_per_iteration)
    )
    assert float(r.tokens_per_s) == pytest.approx(float(r.tokens_per_iteration / r.iteration_s))


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(ANALYTIC),
    st.integers(1, 512),
    st.integers(0, 16),
    st.integers(1, 8),
    st.floats(1.0, 8.0),
    st.floats(1.0, 4.0),
)
def test_more_bandwidth_never_slower(policy, batch, gamma, n, link_x, hbm_x):
    kw = {"gamma": gamma, "draft_experts": n} if policy == "specmoe" else {}
    base = _run(policy, batch=batch, **kw)
    fast = _run(policy, system=_faster(H100, link_x, hbm_x), batch=batch, **kw)
    assert float(fast.iteration_s) <= float(base.iteration_s) * (1 + 1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 512), st.integers(1, 16), st.integers(1, 8))
def test_alpha_zero_gives_speculation_no_gain(batch, gamma, n):
    an = Analytic(MIXTRAL, H100, Workload(batch=batch, acceptance=Acceptance(0.0)))
    pol = make_policy("specmoe", gamma=1, draft_experts=n)
    spec = an.evaluate(pol, gamma=gamma)
    off = an.evaluate(pol, gamma=0)
    assert float(spec.tokens_per_s) <= float(off.tokens_per_s) * (1 + 1e-9)


def test_speculation_pays_at_large_batch_with_good_acceptance():
    an = Analytic(MIXTRAL, H100, Workload(batch=256, acceptance=Acceptance(0.8)))
    r = an.evaluate(make_policy("specmoe", gamma=4, draft_experts=2), gamma=np.array([0, 4]))
    assert r.tokens_per_s[1] > 1.5 * r.tokens_per_s[0]
    assert r.h2d_bytes_per_token[1] < r.h2d_bytes_per_token[0]


def test_vectorised_equals_scalar():
    an = Analytic(MIXTRAL, H100, Workload(batch=8, routing=Routing(kind="zipf", zipf_s=1.0)))
    pol = make_policy("specmoe", gamma=3, draft_experts=2)
    b, g, n = np.array([1, 8, 64, 256]), np.array([0, 3, 5, 10]), np.array([1, 2, 4, 8])
    vec = an.evaluate(pol, batch=b, gamma=g, draft_experts=n, alpha=0.7)
    for i in range(4):
        one = an.evaluate(pol, batch=b[i], gamma=g[i], draft_experts=n[i], alpha=0.7)
        assert vec.tokens_per_s[i] == pytest.approx(float(one.tokens_per_s))


def test_caching_fetches_less_than_ondemand_and_skew_helps_it():
    skew = Workload(batch=16, routing=Routing(kind="zipf", zipf_s=1.5))
    flat = Workload(batch=16)
    od = Analytic(MIXTRAL, H100, skew).evaluate(make_policy("ondemand"))
    ca = Analytic(MIXTRAL, H100, skew).evaluate(make_policy("caching", resident_experts=2))
    ca_flat = Analytic(MIXTRAL, H100, flat).evaluate(make_policy("caching", resident_experts=2))
    assert (
        float(ca.h2d_bytes_per_token)
        < float(ca_flat.h2d_bytes_per_token)
        < float(od.h2d_bytes_per_token)
    )


def test_model_that_cannot_fit_is_reported_not_predicted():
    r = Analytic(load_model("deepseek-v3"), load_system("t4"), Workload(batch=1)).evaluate(
        make_policy("ondemand")
    )
    assert not bool(r.fits) and float(r.gpu_memory_bytes) > 16e9


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"batch": 0}, "batch=0"),
        ({"gamma": 70}, "gamma=70"),
        ({"draft_experts": 9}, "draft_experts=9"),
        ({"alpha": 1.0}, "alpha=1"),
    ],
)
def test_bad_arrays_name_the_field(kw, match):
    an = Analytic(MIXTRAL, H100, Workload())
    with pytest.raises(SpecMoEError, match=match):
        an.evaluate(make_policy("specmoe", gamma=2, draft_experts=2), **kw)


def test_policies_outside_the_analytic_set_are_refused_clearly():
    with pytest.raises(SpecMoEError, match="simulator"):
        Analytic(MIXTRAL, H100).evaluate(Policy(name="spec-ep"))


def test_wrong_prefetches_cost_link_bytes_and_never_speed_up():
    wl = Workload(batch=1, routing=Routing(kind="zipf", zipf_s=1.0))
    an = Analytic(MIXTRAL, H100, wl)
    exact = an.evaluate(make_policy("overlap", prefetch_hit_rate=0.8))
    wasteful = an.evaluate(make_policy("overlap", prefetch_hit_rate=0.8, prefetch_precision=0.5))
    assert float(wasteful.h2d_bytes_per_token) > float(exact.h2d_bytes_per_token)
    assert float(wasteful.iteration_s) >= float(exact.iteration_s)
    # prefetched = h·missing/precision on layers 1..L−1: 0.8/0.5 − 0.8 = 0.8 extra experts per
    # needed one
    extra = (
        float(wasteful.h2d_bytes_per_iteration - exact.h2d_bytes_per_iteration)
        / MIXTRAL.expert_bytes
    )
    missing = float(exact.h2d_bytes_per_iteration) / MIXTRAL.expert_bytes / 32
    assert extra == pytest.approx(31 * 0.8 * missing, rel=1e-9)
