"""Multi-GPU expert parallelism and Speculative MoE: hand-computed small cases, analytic = sim."""

import numpy as np
import pytest

from specmoe.costs.comm import CommModel
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import ModelSpec, load_model
from specmoe.inputs.workload import Routing, Workload
from specmoe.predictors.parallel import Parallel, ParallelModel, place
from specmoe.predictors.sim.parallel import simulate_parallel

H, DT = 64, 2.0  # hidden size, bytes per activation element


def toy(experts=4, top_k=1, layers=2):
    return ModelSpec(
        name="toy",
        family="qwen2_moe",
        num_layers=layers,
        moe_layer_ids=tuple(range(layers)),
        hidden_size=H,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        attention="gqa",
        q_lora_rank=0,
        kv_lora_rank=0,
        qk_nope_head_dim=0,
        qk_rope_head_dim=0,
        v_head_dim=0,
        num_experts=experts,
        top_k=top_k,
        expert_intermediate_size=128,
        num_shared_experts=0,
        shared_expert_intermediate_size=0,
        dense_intermediate_size=0,
        gated_ffn=True,
        vocab_size=100,
        tie_embeddings=False,
    )


def two_gpus():
    return load_system("hgx-h100x8", gpu_count=2)


def test_two_gpus_uniform_bytes_by_hand():
    # 8 tokens, 4 per GPU; k=1 over 4 experts, 2 per GPU: half of a GPU's pairs are remote.
    pm = ParallelModel(toy(), two_gpus(), Workload(batch=8))
    r = pm.evaluate(Parallel(ep=2), [8])
    sent_bytes = 2 * H * DT  # 2 remote pairs per GPU
    assert r.a2a_bytes_per_layer[0] == pytest.approx(2 * 2 * sent_bytes)  # 2 GPUs, dispatch+combine
    ic = pm.system.interconnect
    expected = 2 * (ic.latency_us * 1e-6 + sent_bytes / (ic.bw_gbps * 1e9))
    assert r.a2a_s_per_layer[0] == pytest.approx(expected, rel=1e-12)


def test_one_gpu_has_no_all_to_all():
    pm = ParallelModel(toy(), two_gpus(), Workload(batch=8))
    r = pm.evaluate(Parallel(ep=1, tp=1), [8])
    assert r.a2a_bytes_per_layer[0] == 0 and r.a2a_s_per_layer[0] == 0


def test_perfect_shuffle_removes_all_bytes_for_top1():
    pm = ParallelModel(toy(), two_gpus(), Workload(batch=8))
    r = pm.evaluate(Parallel(ep=2, shuffle=True, accuracy=1.0), [8])
    assert r.a2a_bytes_per_layer[0] == 0
    assert r.a2a_s_per_layer[0] == pytest.approx(2 * pm.system.interconnect.latency_us * 1e-6)


def test_shuffle_with_top2_by_hand():
    # q=0.5: half the tokens sit on their first expert's GPU; the other expert shares it with
    # c0 = (E/ep - 1)/(E - 1) = 1/3. Local pairs per token 0.5*(1+1/3) + 0.5*1 = 7/6 of 2.
    pm = ParallelModel(toy(top_k=2), two_gpus(), Workload(batch=8))
    loads = pm.loads(Parallel(ep=2, shuffle=True, accuracy=0.5), [8], pm.rows[0], np.array([2]))
    assert loads.send[0] == pytest.approx([4 * (2 - 7 / 6)] * 2)
    assert loads.recv[0] == pytest.approx([4 * (2 - 7 / 6)] * 2)
    # shuffling off: the accuracy is ignored, half the pairs remote
    off = pm.loads(Parallel(ep=2, shuffle=False, accuracy=0.5), [8], pm.rows[0], np.array([2]))
    assert off.send[0] == pytest.approx([4.0, 4.0])


def test_grouping_helps_only_with_shuffling():
    pm = ParallelModel(
        toy(experts=8, top_k=2), load_system("hgx-h100x8", gpu_count=4), Workload(batch=64)
    )
    vol = {
        (s, c): pm.evaluate(
            Parallel(ep=4, shuffle=s, accuracy=0.8, colocation=c), [64]
        ).a2a_bytes_per_layer[0]
        for s in (False, True)
        for c in (None, 0.9)
    }
    assert vol[(False, None)] == pytest.approx(vol[(False, 0.9)])
    assert vol[(True, 0.9)] < vol[(True, None)] < vol[(False, None)]


def test_placement_and_imbalance_by_hand():
    probs = (0.4, 0.3, 0.2, 0.1)
    assert list(place(np.array(probs), 2, "round_robin")) == [0, 1, 0, 1]
    assert list(place(np.array(probs), 2, "greedy")) == [0, 1, 1, 0]
    wl = Workload(batch=8, routing=Routing(kind="empirical", probs=(probs, probs)))
    pm = ParallelModel(toy(), two_gpus(), wl)
    rr = pm.evaluate(Parallel(ep=2, placement="round_robin"), [8])
    gr = pm.evaluate(Parallel(ep=2, placement="greedy"), [8])
    assert rr.imbalance[0] == pytest.approx(0.6 / 0.5)
    assert gr.imbalance[0] == pytest.approx(1.0)
    assert gr.layer_s[0] <= rr.layer_s[0]


def test_off_node_share_and_two_node_step():
    sysm = load_system("hgx-h100x8-2node-400g")
    comm = CommModel(sysm)
    assert comm.off_node_share(8) == 0 and comm.off_node_share(16) == pytest.approx(8 / 15)
    b = 1e6
    t = comm.step(b, 16)
    want = sysm.network.latency_us * 1e-6 + max(b * 7 / 15 / 450e9, b * 8 / 15 / 50e9)
    assert t == pytest.approx(want)
    assert comm.step(b, 8) == pytest.approx(6e-6 + b / 450e9)


def test_offloading_when_experts_do_not_fit():
    m = load_model("qwen3-235b-a22b")
    pm = ParallelModel(m, load_system("hgx-h100x8"), Workload(batch=64))
    one = pm.evaluate(Parallel(ep=1, tp=8), [64])
    eight = pm.evaluate(Parallel(ep=8, tp=8), [64])
    assert not one.fits[0] and one.feasible[0] and one.resident_per_gpu_layer[0] < m.num_experts
    assert eight.fits[0] and eight.resident_per_gpu_layer[0] == m.num_experts // 8
    # uniform routing: the missing experts are the non-resident share of the distinct ones;
    # ep=1 on 8 GPUs = 8 expert replicas, each GPU routes its own 64/8 tokens
    R, E, k = one.resident_per_gpu_layer[0], m.num_experts, m.top_k
    loads = pm.loads(Parallel(ep=1, tp=8), [64], pm.rows[0], np.array([R]))
    distinct = E * (1 - (1 - k / E) ** 8)
    assert loads.missing[0, 0] == pytest.approx(distinct * (E - R) / E)


def test_bad_degrees_are_refused():
    pm = ParallelModel(toy(), two_gpus(), Workload(batch=8))
    with pytest.raises(SpecMoEError, match="ep=3"):
        pm.evaluate(Parallel(ep=3))
    with pytest.raises(SpecMoEError, match="accuracy"):
        pm.evaluate(Parallel(ep=2, shuffle=True, accuracy=1.5))


CASES = [
    ("hgx-h100x8", Parallel(ep=8)),
    ("hgx-h100x8", Parallel(ep=4, tp=2, overlap=True, shuffle=True, accuracy=0.6)),
    ("hgx-h100x8-2node-100g", Parallel(ep=16, tp=2, shuffle=True, accuracy=0.5, colocation=0.4)),
    ("h100-pcie-x8", Parallel(ep=2, tp=1, placement="greedy")),
]


@pytest.mark.parametrize("hw,par", CASES)
@pytest.mark.parametrize("routing", [Routing(), Routing(kind="zipf", zipf_s=1.2)])
def test_simulator_matches_analytic_without_variance(hw, par, routing):
    pm = ParallelModel(
        load_model("deepseek-v2-lite"), load_system(hw), Workload(batch=128, routing=routing)
    )
    a = pm.evaluate(par, [128])
    s = simulate_parallel(pm, par, 128, steps=1)
    assert s.iteration_s == pytest.approx(a.iteration_s[0], rel=1e-9)
    assert s.a2a_bytes_per_layer == pytest.approx(a.a2a_bytes_per_layer[0], rel=1e-9)


def test_simulator_matches_analytic_with_offloading():
    pm = ParallelModel(load_model("qwen3-235b-a22b"), load_system("hgx-h100x8"), Workload(batch=32))
    par = Parallel(ep=2, tp=8)
    assert not pm.evaluate(par, [32]).fits[0]
    s = simulate_parallel(pm, par, 32, steps=1)
    assert s.iteration_s == pytest.approx(pm.evaluate(par, [32]).iteration_s[0], rel=1e-9)


def test_sampled_routing_reproduces_expected_volume_and_costs_the_busiest_gpu():
    pm = ParallelModel(
        load_model("deepseek-v2-lite"), load_system("hgx-h100x8"), Workload(batch=512)
    )
    par = Parallel(ep=8, shuffle=True, accuracy=0.6)
    a = pm.evaluate(par, [512])
    s = simulate_parallel(pm, par, 512, steps=2, sample=True, seed=1)
    assert s.a2a_bytes_per_layer == pytest.approx(a.a2a_bytes_per_layer[0], rel=0.02)
    # random loads: the busiest GPU carries more than the expected (equal) share
    assert s.busiest_pairs_per_layer > 512 * 6 / 8 * 1.02
    assert s.iteration_s > a.iteration_s[0]


def test_multi_node_system_needs_a_network(tmp_path):
    f = tmp_path / "two-nodes.yaml"
    f.write_text("gpu: h100-sxm\ngpu_count: 16\nnodes: 2\ninterconnect: nvlink4-h100\n")
    with pytest.raises(SpecMoEError, match="network"):
        load_system(str(f))
    f.write_text(
        "gpu: h100-sxm\ngpu_count: 12\nnodes: 8\ninterconnect: nvlink4-h100\nnetwork: net-200g\n"
    )
    with pytest.raises(SpecMoEError, match="multiple of nodes"):
        load_system(str(f))
    f.write_text(
        "gpu: h100-sxm\ngpu_count: 16\nnodes: 2\ninterconnect: nvlink4-h100\nnetwork: net-200g\n"
    )
    s = load_system(str(f))
    assert (s.gpus_per_node, s.network.bw_gbps, s.network.kind) == (8, 25.0, "network")


def test_per_gpu_memory_by_hand():
    m = load_model("deepseek-v2-lite")
    pm = ParallelModel(m, two_gpus(), Workload(batch=8, prompt_len=512, output_len=256))
    full, staged = pm.memory(Parallel(ep=2, tp=2), np.array([8.0]))
    kv = 8 * (512 + 256 + 1) * m.kv_bytes_per_token / 2
    work = 8 * (m.vocab_size * 4 / 2 + 8 * m.hidden_size * m.dtype_bytes)
    base = m.resident_bytes / 2 + kv + work
    assert full[0] == pytest.approx(base + m.num_moe_layers * 32 * m.expert_bytes)
    assert staged[0] == pytest.approx(base + 32 * m.expert_bytes)
