"""Evidence-based defaults, prediction intervals, per-model acceptance and the routing-size
check."""

import numpy as np
import pytest
from scipy.stats import norm

import specmoe
from specmoe.costs.evidence import evidence_for
from specmoe.costs.ops import CostModel
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.setup import resolve
from specmoe.inputs.workload import default_acceptance, shaped_alpha, tau
from specmoe.predictors.intervals import DRAWS, draws_for, normal_scores, quantiles

MIXTRAL = load_model("mixtral-8x7b")
Z90 = norm.ppf(0.9)  # 1.2816


def test_latin_hypercube_marginals_are_exact_quantiles():
    z = normal_scores(3)
    assert z.shape == (DRAWS, 3)
    for j in range(3):  # each column: Φ⁻¹((i + ½)/25) in some order, so p10 / p90 are ∓1.2816
        q = quantiles(z[:, j])
        assert q == pytest.approx([-Z90, 0.0, Z90], abs=1e-12)


def test_one_link_parameter_gives_hand_computed_p10_p90_of_a_copy():
    # A copy's time is bytes / (bw · η_link): linear in 1/η_link. With only link_eff uncertain
    # (log-normal, σ = 0.05 on PCIe 4) its p90 time is bytes / (bw · 0.79 · e^(−1.2816·0.05)).
    system = load_system("a100-sxm-80gb")  # pcie4-x16: link_eff 0.79 ± 0.05
    ev = evidence_for(system)
    assert ev.values["link_eff"] == 0.79 and ev.spreads["link_eff"] == 0.05
    d = draws_for(system)
    c = CostModel(MIXTRAL, system, d.params)
    bw = system.link.h2d_gbps * 1e9
    t = np.ravel(c.h2d(1e9) - c.link_setup)  # [DRAWS] seconds per 1 GB
    p10, p50, p90 = quantiles(t)
    assert p50 == pytest.approx(1e9 / (bw * 0.79), rel=1e-9)
    assert p90 == pytest.approx(1e9 / (bw * 0.79 * np.exp(-Z90 * 0.05)), rel=1e-9)
    assert p10 == pytest.approx(1e9 / (bw * min(1.0, 0.79 * np.exp(Z90 * 0.05))), rel=1e-9)


def test_efficiency_draws_never_exceed_the_physical_peak():
    d = draws_for(load_system("h100-pcie"))  # link_eff 0.84 ± 0.2: the upper draws would pass 1
    assert np.max(d.params.link_eff) == 1.0 and np.min(d.params.link_eff) < 0.84


def test_prediction_carries_an_interval_around_its_median():
    p = specmoe.predict(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        policy="specmoe",
        batch=32,
        gamma=4,
        draft_experts=2,
    )
    assert p["tokens_per_s_p10"] < p["tokens_per_s_p50"] < p["tokens_per_s_p90"]
    assert p["tpot_ms_p10"] < p["tpot_ms_p90"] and p["ttft_ms_p10"] < p["ttft_ms_p90"]
    assert p["tokens_per_s_p10"] < p["tokens_per_s"] < p["tokens_per_s_p90"]
    assert p["evidence"]["alpha_source"].startswith("mixtral-8x7b: prior")


def test_ideal_is_faster_than_the_default_and_has_no_spread():
    kw = dict(model="mixtral-8x7b", hardware="h100-pcie", policy="ondemand", batch=16)
    ideal, default = specmoe.predict(ideal=True, **kw), specmoe.predict(**kw)
    assert ideal["tokens_per_s"] > default["tokens_per_s"] * 1.1
    assert ideal["tokens_per_s_p10"] == pytest.approx(
        ideal["tokens_per_s_p90"]
    )  # α unused, no spreads
    assert ideal["evidence"]["ideal"] and not default["evidence"]["ideal"]


def test_default_acceptance_is_per_model_with_its_source():
    nllb = resolve(
        model="nllb-moe-54b", policy="specmoe", gamma=10, draft_experts=4
    ).workload.acceptance
    # SpecMoE's published τ(10) = 7.265 (HotTemporal) at the paper's N = 4 comes back exactly
    assert float(tau(nllb.alpha_for(4), 10)) == pytest.approx(7.265, rel=1e-6)
    assert "2604.10152" in nllb.source and nllb.alpha_spread == 0.02
    mix = resolve(
        model="mixtral-8x7b", policy="specmoe", gamma=4, draft_experts=2
    ).workload.acceptance
    assert mix.alpha == pytest.approx(0.6) and mix.alpha_spread == 0.15  # stated prior at N/E = 1/4
    assert "prior, not a measurement" in mix.source
    assert mix.alpha != pytest.approx(nllb.alpha)  # no borrowed point value
    a = mix.alpha_for(np.arange(1, 9))
    assert np.all(np.diff(a) > 0) and a[-1] < 1.0  # shaped by the tiny curve


def test_shaped_alpha_scales_the_rejection_rate_like_the_tiny_curve():
    # tiny HotTemporal: s(1/8)=0.42905, s(1/4)=0.53490 → 1 − α(1/8) = 0.4·(1−0.42905)/(1−0.53490)
    a = shaped_alpha(0.6, 0.25, [0.125, 0.25], "hottemporal")
    assert a[1] == pytest.approx(0.6)
    assert a[0] == pytest.approx(1 - 0.4 * (1 - 0.4290505310153534) / (1 - 0.5348951436803866))
    assert default_acceptance("qwen3-30b-a3b", 128).alpha_for(32) == pytest.approx(0.6)


def test_measured_routing_of_another_expert_count_is_refused_unless_resampled():
    with pytest.raises(
        SpecMoEError, match="measured over 8 experts per layer, but qwen3-30b-a3b has 128"
    ):
        resolve(model="qwen3-30b-a3b", routing="measured:tiny")
    s = resolve(model="qwen3-30b-a3b", routing="measured:tiny:resample")
    assert s.workload.routing.kind == "empirical"
    with pytest.raises(SpecMoEError, match="resample"):
        resolve(model="qwen3-30b-a3b", routing="measured:tiny:shuffle")


def test_plan_reports_whether_the_best_is_too_close_to_call():
    p = specmoe.plan(
        model="mixtral-8x7b", hardware="h100-pcie", batch=64, confirm="analytic", gammas=range(0, 9)
    )
    v, b = p["verdict"], p["best"]
    rivals = {k: c for k, c in p["best_by_policy"].items() if k != b["policy"]}
    overlapping = {
        k
        for k, c in rivals.items()
        if c["tokens_per_s_p10"] <= b["tokens_per_s_p90"]
        and b["tokens_per_s_p10"] <= c["tokens_per_s_p90"]
    }
    assert v["too_close_to_call"] == bool(overlapping)
    assert {r["policy"] for r in v["overlapping"]} == overlapping
    assert p["acceptance_source"] and p["evidence"]["gpu_parameters"]


def test_too_close_to_call_names_the_input_that_separates_the_options():
    # RTX 4090, Mixtral, batch 32: cpu and specmoe overlap; α's prior spread (0.15) matters most
    p = specmoe.plan(model="mixtral-8x7b", hardware="rtx-4090", batch=32, confirm="analytic")
    v = p["verdict"]
    assert v["too_close_to_call"]
    sep = v["measure_to_separate"]
    assert sep["input"] == "acceptance (alpha)"  # cpu does not speculate, specmoe does
    assert {"link_eff", "cpu_compute_eff"} <= set(sep["effects_pct"])
    assert sep["effects_pct"]["acceptance (alpha)"] == max(sep["effects_pct"].values())
