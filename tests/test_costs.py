import numpy as np
import pytest

from specmoe.costs.evidence import evidence_for
from specmoe.costs.ops import PARAM_NAMES, CostModel, CostParams, params_for
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model

MIXTRAL = load_model("mixtral-8x7b")
H100 = load_system("h100-pcie", ideal=True)  # the roofline arithmetic, no priors
H100_DEFAULT = load_system("h100-pcie")  # best evidence: published priors


def test_decode_expert_gemm_is_memory_bound_and_large_batch_compute_bound():
    c = CostModel(MIXTRAL, H100)
    one = float(c.experts(1, 1))
    assert one == pytest.approx(MIXTRAL.expert_bytes / (H100.gpu.hbm_bw_gbps * 1e9), rel=0.01)
    big = float(c.experts(8192, 1))
    assert big == pytest.approx(
        8192 * MIXTRAL.expert_flops_per_token / (H100.gpu.bf16_tflops * 1e12), rel=0.01
    )


def test_expert_fetch_is_setup_plus_bytes_over_link():
    c = CostModel(MIXTRAL, H100)
    expected = H100.link.setup_us * 1e-6 + MIXTRAL.expert_bytes / (H100.link.h2d_gbps * 1e9)
    assert float(c.expert_fetch(1)) == pytest.approx(expected)
    assert float(c.expert_fetch(3)) == pytest.approx(3 * expected)


def test_efficiencies_slow_things_down_as_stated():
    sys2 = H100_DEFAULT.model_copy(
        update={"efficiency": {"link_eff": 0.5, "gemm_half_tokens": 64.0}}
    )
    c1, c2 = CostModel(MIXTRAL, H100), CostModel(MIXTRAL, sys2)
    assert float(c2.h2d(1e9)) - c2.link_setup == pytest.approx(
        2 * (float(c1.h2d(1e9)) - c1.link_setup)
    )
    # the efficiency block overrides the evidence's m_half (a calibrated profile of this GPU's
    # family where one ships, else the GPU prior); η_c(m_half) is half the evidence's η_c
    eta = evidence_for(H100_DEFAULT).values["gemm_compute_eff"]
    assert c2.p.gemm_compute_eff == pytest.approx(eta)
    assert float(c2.compute_eff(64)) == pytest.approx(0.5 * eta)
    assert np.all(np.diff(c2.compute_eff(np.array([1, 8, 64, 512]))) > 0)


def test_ssd_share_when_experts_exceed_host_memory():
    small_host = H100.host.model_copy(update={"dram_gb": 40.0})
    c = CostModel(MIXTRAL, H100.model_copy(update={"host": small_host}))
    assert c.ssd_per_expert() > 0 and CostModel(MIXTRAL, H100).ssd_per_expert() == 0


def test_unknown_or_negative_efficiency_is_named():
    with pytest.raises(SpecMoEError, match="hbm_eficiency"):
        params_for(H100_DEFAULT.model_copy(update={"efficiency": {"hbm_eficiency": 0.8}}))
    with pytest.raises(SpecMoEError, match="link_eff=-1"):
        params_for(H100_DEFAULT.model_copy(update={"efficiency": {"link_eff": -1.0}}))
    assert "gemm_compute_eff" in PARAM_NAMES and CostParams().hbm_eff == 1.0
