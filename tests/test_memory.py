"""The one memory model: a plan fills at most HBM × utilisation − the CUDA context."""

import numpy as np
import pytest

from specmoe.costs.memory import CUDA_CONTEXT_GB, Memory
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import make_policy
from specmoe.inputs.workload import ExpertCounts, Routing, Workload
from specmoe.predictors.analytic import Analytic

MIXTRAL = load_model("mixtral-8x7b")
H100 = load_system("h100-pcie")


def test_usable_capacity_by_hand():
    m = Memory(MIXTRAL, H100, Workload(gpu_memory_utilization=0.8))
    assert m.capacity_bytes == pytest.approx(H100.gpu.hbm_gb * 1e9 * 0.8 - CUDA_CONTEXT_GB * 1e9)
    assert "0.80 utilisation" in m.explain_capacity()


def test_bytes_by_hand():
    w = Workload(batch=2, prompt_len=10, output_len=6)
    m = Memory(MIXTRAL, H100, w)
    kv = 2 * (10 + 6 + 3 + 1) * MIXTRAL.kv_bytes_per_token
    work = 2 * 4 * (MIXTRAL.vocab_size * 4 + 8 * MIXTRAL.hidden_size * MIXTRAL.dtype_bytes)
    experts = (1 * MIXTRAL.num_moe_layers + 2 + 5) * MIXTRAL.expert_bytes
    assert float(m.bytes(2, 3, 1, 2, lru=5)) == pytest.approx(
        MIXTRAL.resident_bytes + kv + work + experts
    )


def test_a_lower_limit_keeps_fewer_experts_resident_and_rejects_with_the_numbers():
    def resident(u):
        wl = Workload(batch=16, gpu_memory_utilization=u)
        r = Analytic(MIXTRAL, H100, wl).evaluate(make_policy("caching"))
        return int(r.resident_experts_per_layer), float(r.gpu_memory_bytes), bool(r.fits)

    r9, mem9, fits9 = resident(0.9)
    r6, mem6, fits6 = resident(0.6)
    assert r6 < r9 and fits9 and fits6
    assert mem9 <= Memory(MIXTRAL, H100, Workload(gpu_memory_utilization=0.9)).capacity_bytes
    # The largest count that fits: one more expert per layer would not.
    m = Memory(MIXTRAL, H100, Workload(batch=16))
    counts = ExpertCounts(Routing().inclusion_probs(8, 2, 32))
    assert int(m.max_resident(np.array(16.0), 0.0, counts, "caching")) == r9
    one_more = float(m.bytes(16, 0, r9 + 1, 0))
    assert one_more > m.capacity_bytes


def test_utilisation_out_of_range_is_refused():
    with pytest.raises(SpecMoEError, match="gpu_memory_utilization"):
        Workload(gpu_memory_utilization=1.2)
