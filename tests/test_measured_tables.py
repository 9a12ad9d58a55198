"""Measured kernel tables in predictions: grid interpolation, the shipped extracts, and which
source answers each op (issue 13, hybrid prediction)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import specmoe
from specmoe.costs.evidence import tables_for
from specmoe.costs.ops import CostModel, CostParams, balanced_routing, prediction_costs
from specmoe.costs.tables import Tables
from specmoe.inputs.hardware import as_ideal, load_system
from specmoe.inputs.models import load_model, spec_from_dims

H100 = load_system("h100-sxm")


def test_grid_dimensions_interpolate_in_log_space_between_measured_values():
    # GEMMs measured at n = 1024 and 4096 (k = 1024), m = 16: 10 µs and 40 µs
    t = Tables([("gemm", (1024.0, 1024.0), 16.0, 10e-6), ("gemm", (4096.0, 1024.0), 16.0, 40e-6)])
    # n = 2048 is halfway in log(n): the geometric mean of the corners, 20 µs
    assert t.at("gemm", (2048.0, 1024.0), 16.0) == pytest.approx(20e-6)
    assert t.at("gemm", (1024.0, 1024.0), 16.0) == pytest.approx(10e-6)
    # log-linear between (1024, 10 µs) and (4096, 40 µs) is t = 10 µs x n / 1024
    assert t.at("gemm", (3000.0, 1024.0), 16.0) == pytest.approx(10e-6 * 3000 / 1024)
    assert np.isnan(t.at("gemm", (8192.0, 1024.0), 16.0))     # beyond the grid
    assert np.isnan(t.at("gemm", (2048.0, 2048.0), 16.0))     # k never measured: no corner
    assert np.isnan(t.at("gemm", (2048.0, 1024.0), 32.0))     # m beyond every corner's range


def test_a_query_within_rounding_of_a_measured_value_is_inside():
    t = Tables([("gemm", (64.0, 64.0), 1.0, 5e-6), ("gemm", (64.0, 64.0), 8.0, 9e-6)])
    assert t.at("gemm", (64.0, 64.0), 1.0 - 1e-9) == pytest.approx(5e-6)
    assert t.at("gemm", (64.0 * (1 + 1e-9), 64.0), 8.0) == pytest.approx(9e-6)
    assert np.isnan(t.at("gemm", (64.0, 64.0), 0.99))


def test_the_extract_round_trips_within_its_stated_precision(tmp_path):
    rows = [("gemm", (128.0, 256.0), 4.0, 7.123456e-6),
            ("moe", (64.0, 32.0, 8.0, 2.0, "power_law_1.2"), 3.0, 1.5e-4),
            ("attn_decode", (8.0, 2.0, 64.0, 4.0), 512.0, 2.2e-5)]
    t = Tables(rows, source="test", meta={"device": "X"})
    back = Tables.load(t.save(tmp_path / "x-vllm.npz"))
    assert back.source == "test" and back.meta == {"device": "X"}
    for op, key, x, sec in rows:
        assert back.at(op, key, x) == pytest.approx(sec, rel=5e-4)   # round(1000 ln µs)


def _moe_model():
    # hidden 64, expert FFN 32, 1 head of 64, 8 experts, top-2, vocab 64, one layer
    return spec_from_dims("t", 2.0, 64, 32, 1, 1, 64, 8, 2, 64, 1)


def test_a_fused_moe_at_balanced_routing_takes_the_measurement():
    spec = _moe_model()
    key = (64.0, 32.0, 8.0, 2.0, "balanced")
    tables = Tables([("moe", key, 1.0, 30e-6), ("moe", key, 64.0, 90e-6)])
    c = CostModel(spec, H100, CostParams(), tables=tables)
    pairs = 8.0 * 2                                       # 8 tokens, top_k 2
    distinct = 8.0                                        # balanced: 16 pairs touch all 8
    assert balanced_routing(pairs, 8) == (8.0, 2.0)
    expected = float(np.exp(np.interp(np.log(8), np.log([1, 64]), np.log([30e-6, 90e-6]))))
    assert float(c.experts(pairs, distinct)) == pytest.approx(expected)
    assert c.sources["moe"] == {"table": 1, "model": 0}


def test_a_fused_moe_touching_fewer_experts_scales_the_measurement_by_the_models_ratio():
    spec = _moe_model()
    key = (64.0, 32.0, 8.0, 2.0, "balanced")
    tables = Tables([("moe", key, 1.0, 30e-6), ("moe", key, 64.0, 90e-6)])
    params = replace(CostParams(), kernel_overhead_us=0.0)
    with_t, model = (CostModel(spec, H100, params, tables=tables), CostModel(spec, H100, params))
    pairs = 16.0
    table_8 = float(with_t.experts(pairs, 8.0))          # balanced: all 8 experts touched
    # 16 pairs on 2 experts: the table's time times the model's 2-expert / 8-expert ratio
    ratio = float(model.experts(pairs, 2.0)) / float(model.experts(pairs, 8.0))
    assert ratio < 0.5                                   # weights of 2 experts, not 8
    assert float(with_t.experts(pairs, 2.0)) == pytest.approx(table_8 * ratio)


def test_a_forward_pass_does_not_take_a_replayed_measurement_served_from_l2():
    # a 64x64 GEMM (8 KiB of weights) fits in L2: measured 1 µs as a replay; with an L2 twice
    # HBM's bandwidth and a memory-bound op, a forward pass reading HBM takes twice that
    spec = spec_from_dims("t", 2.0, 64, 64, 1, 1, 64, 8, 2, 64, 1)
    tables = Tables([("gemm", (64.0, 64.0), 1.0, 1e-6), ("gemm", (64.0, 64.0), 4.0, 2e-6)])
    params = replace(CostParams(), l2_bw_factor=2.0)
    fwd = CostModel(spec, H100, params, tables=tables)
    replayed = CostModel(spec, H100, params, replay=True, tables=tables)
    assert float(replayed.dense_gemm(1.0, 64.0, 64.0)) == pytest.approx(1e-6)
    assert float(fwd.dense_gemm(1.0, 64.0, 64.0)) == pytest.approx(2e-6)


def test_decode_attention_takes_the_table_and_prefill_does_not():
    m = load_model("mixtral-8x7b")
    key = (float(m.num_heads), float(m.num_kv_heads), float(m.head_dim), 4.0)
    tables = Tables([("attn_decode", key, 128.0, 20e-6), ("attn_decode", key, 4096.0, 60e-6)])
    c, model = CostModel(m, H100, tables=tables), CostModel(m, H100)
    assert float(c.attention_scores(4.0, 4.0, 128.0)) == pytest.approx(20e-6)
    # verifying 4 drafted tokens per sequence (5 queries): the measurement x the model's ratio
    ratio = float(model.attention_scores(20.0, 4.0, 128.0)
                  / model.attention_scores(4.0, 4.0, 128.0))
    assert float(c.attention_scores(20.0, 4.0, 128.0)) == pytest.approx(20e-6 * ratio)
    # a prefill of 512 tokens per sequence is not decode: the model answers
    assert float(c.attention_scores(4 * 512.0, 4.0, 256.0)) == \
        float(model.attention_scores(4 * 512.0, 4.0, 256.0))


def test_predictions_use_the_gpus_own_tables_else_its_dies():
    assert tables_for(H100).meta["gpu"] == "h100-sxm"          # shipped: h100-sxm-vllm.npz
    assert tables_for(load_system("h200-sxm")).meta["gpu"] == "h200-sxm"   # its own first
    assert tables_for(load_system("h100-pcie")).meta["gpu"] == "h100-sxm"  # GH100 too
    assert tables_for(load_system("rtx-4090")).meta["gpu"] == "l40s"       # AD102
    assert tables_for(load_system("l4")) is None               # AD104: no tables of its die
    assert tables_for(load_system("t4")) is None
    assert tables_for(as_ideal(H100)) is None
    assert tables_for(H100.model_copy(update={"measured_tables": False})) is None
    m = load_model("mixtral-8x7b")
    assert prediction_costs(m, H100).tables is tables_for(H100)


def test_a_same_die_gpus_table_is_scaled_by_the_models_ratio_between_the_gpus():
    pcie = load_system("h100-pcie")      # 2.0 TB/s, 756.5 TFLOP/s; H100 SXM 3.35, 989.5
    spec = spec_from_dims("t", 2.0, 64, 64, 1, 1, 64, 8, 2, 64, 1)
    rows = [("gemm", (8192.0, 8192.0), m, t) for m, t in ((1.0, 50e-6), (8192.0, 2e-3))]
    tables = Tables(rows, meta={"gpu": "h100-sxm"})
    c = CostModel(spec, pcie, CostParams(), replay=True, tables=tables)
    # m = 1 streams the 128 MiB weight: memory-bound on both, time x 3350 / 2000
    assert float(c.dense_gemm(1.0, 8192.0, 8192.0)) == pytest.approx(50e-6 * 3350 / 2000)
    # m = 8192: compute-bound on both, time x 989.5 / 756.5
    assert float(c.dense_gemm(8192.0, 8192.0, 8192.0)) == pytest.approx(2e-3 * 989.5 / 756.5)
    assert c.sources["gemm"] == {"table": 2, "model": 0}
    # the GPU's own tables are not scaled
    own = CostModel(spec, H100, CostParams(), replay=True,
                    tables=Tables(rows, meta={"gpu": "h100-sxm"}))
    assert float(own.dense_gemm(1.0, 8192.0, 8192.0)) == pytest.approx(50e-6)


def test_a_carried_tables_interval_adds_the_measured_transfer_error():
    from specmoe.costs.evidence import TABLE_SPREAD, TRANSFER_SPREAD, _kin, evidence_for

    ev = evidence_for(load_system("h100-pcie"))
    assert ev.spreads["table_scale"] == pytest.approx(np.hypot(TABLE_SPREAD, TRANSFER_SPREAD))
    assert TRANSFER_SPREAD > 0 and "same die" in ev.sources["table_scale"]
    d = specmoe.predict(model="mixtral-8x7b", hardware="h100-pcie", policy="ondemand", batch=4)
    assert "carried to h100-pcie" in d["evidence"]["measured_tables"]
    # a GPU without a profile borrows its die's first (the GPU whose tables it borrows)
    assert _kin("gb300")[0] == "b300" and _kin("h100-pcie")[0] == "h100-sxm"


def test_the_transfer_spread_is_what_the_committed_transfer_errors_give():
    import json

    import table_transfer

    from specmoe.costs.evidence import TRANSFER_SPREAD

    results = json.loads(table_transfer.REPORT.with_suffix(".json").read_text())
    assert table_transfer.transfer_spread(results)[0] == TRANSFER_SPREAD
    # hand check: cells with p90 0.1 and 0.3 for one op -> the median of their σ
    cells = {"same_die": {"a": {"gemm": {"scaled": {"p90": 0.1}}},
                          "b": {"gemm": {"scaled": {"p90": 0.3}}}}}
    s = (np.log1p(0.1) + np.log1p(0.3)) / 2 / 1.6448536
    assert table_transfer.transfer_spread(cells)[0] == round(s, 2)


def test_a_prediction_says_which_source_answered_each_op():
    kw = dict(model="mixtral-8x7b", policy="ondemand", batch=4)
    d = specmoe.predict(hardware=H100, **kw)
    ev = d["evidence"]
    assert "vllm" in ev["measured_tables"] and "H100" in ev["measured_tables"]
    assert ev["op_sources"]["fused MoE"].startswith("decoding step: measured table")
    off = specmoe.predict(hardware=H100.model_copy(update={"measured_tables": False}), **kw)
    assert off["evidence"]["op_sources"]["fused MoE"].startswith("decoding step: fitted model")
    assert off["evidence"]["measured_tables"].startswith("none")
    assert off["breakdown"]["expert_compute"] != d["breakdown"]["expert_compute"]


def test_the_carry_over_spreads_are_what_the_committed_cross_gpu_errors_give():
    import json

    import carry_over

    from specmoe.costs.evidence import (
        CARRY_OVER_SPREADS,
        TABLE_SPREAD,
        carry_over_spread,
        evidence_for,
    )

    report = json.loads(carry_over.REPORT.read_text())
    assert carry_over.carry_over_spreads(report) == CARRY_OVER_SPREADS
    assert carry_over.table_spread(report) == TABLE_SPREAD
    # hand check of the conversion: p90 |error| 0.2 self, 0.3 other -> sqrt(σ_o² − σ_s²)
    s_self, s_other = np.log1p(0.2) / 1.6448536, np.log1p(0.3) / 1.6448536
    cell = {"gpus": {"g": {"errors": {"self": {"gemm": {"p90": 0.2}},
                                      "logo": {"gemm": {"p90": 0.3}}}}}}
    assert carry_over.carry_over_spreads(cell) == \
        {"gemm": round(float(np.sqrt(s_other**2 - s_self**2)), 2)}
    # a carried-over parameter widens by its own op class's spread
    assert carry_over_spread("moe_hbm_eff") == CARRY_OVER_SPREADS["moe"]
    assert carry_over_spread("layer_overhead_us") == max(CARRY_OVER_SPREADS.values())
    own = evidence_for(load_system("h100-sxm")).spreads["moe_hbm_eff"]
    carried = evidence_for(load_system("h100-pcie")).spreads["moe_hbm_eff"]
    assert carried == pytest.approx(np.hypot(own, CARRY_OVER_SPREADS["moe"]))


def test_a_measured_ops_interval_comes_from_the_tables_error_not_the_parameters():
    from specmoe.costs.evidence import TABLE_SPREAD, evidence_for

    ev = evidence_for(H100)
    assert ev.values["table_scale"] == 1.0 and ev.spreads["table_scale"] == TABLE_SPREAD
    assert "table_scale" not in evidence_for(load_system("l4")).values   # no tables
    # drawn table_scale values scale the measurement, one row per draw
    spec = spec_from_dims("t", 2.0, 64, 64, 1, 1, 64, 8, 2, 64, 1)
    tables = Tables([("gemm", (64.0, 64.0), 1.0, 1e-6), ("gemm", (64.0, 64.0), 4.0, 2e-6)])
    draws = replace(CostParams(), table_scale=np.array([[0.9], [1.1]]))
    t = CostModel(spec, H100, draws, replay=True, tables=tables).dense_gemm(np.array([1.0]), 64, 64)
    assert np.ravel(t) == pytest.approx([0.9e-6, 1.1e-6])


def test_engine_rows_compare_with_the_tables_at_the_same_shape(tmp_path):
    import engine_vs_tables as evt

    from specmoe.measure.trace import event, read_trace, write_trace

    evs = [event("gemm", "gemm", 0, 30.0, shape=[16, 4096, 4096]),          # table: 20 µs
           event("gemm", "gemm", 1, 99.0, shape=[16, 999, 4096]),           # no such n: skipped
           event("attention", "attn", 2, 12.0, shape=[4, 1, 128, 32, 8, 128]),
           event("attention", "attn", 3, 50.0, shape=[4, 5, 128, 32, 8, 128]),   # verify: skipped
           event("fused_moe", "moe", 4, 80.0, tokens=8, experts=8, top_k=2, num_experts=8,
                 shape=[8, 4096, 14336])]
    path = write_trace(tmp_path / "m.jsonl.gz", {"schema": "specmoe.trace/1", "source": "engine",
                                                 "device": {"name": "X"}}, evs)
    tables = Tables([("gemm", (4096.0, 4096.0), 16.0, 20e-6),
                     ("attn_decode", (32.0, 8.0, 128.0, 4.0), 128.0, 10e-6),
                     ("moe", (4096.0, 14336.0, 8.0, 2.0, "balanced"), 8.0, 100e-6)])
    rows = evt.compare(read_trace(path), tables)
    assert [(r["op"], round(r["engine_us"] / r["table_us"], 3)) for r in rows] == \
        [("gemm", 1.5), ("attn_decode", 1.2), ("moe", 0.8)]
    assert evt.summary(rows)["gemm"] == {"rows": 1, "median": 1.5, "p10": 1.5, "p90": 1.5}


def test_causal_attention_is_prefill_attention():
    # P = 512 new tokens per sequence attending to each other: prefill_attention and its tables
    m = load_model("mixtral-8x7b")
    key = (float(m.num_heads), float(m.num_kv_heads), float(m.head_dim), 4.0)
    tables = Tables([("attn_prefill", key, 256.0, 0.1e-3), ("attn_prefill", key, 1024.0, 1e-3)])
    c = CostModel(m, H100, CostParams(), tables=tables)
    expected = float(np.exp(np.interp(np.log(512), np.log([256, 1024]), np.log([0.1e-3, 1e-3]))))
    assert float(c.attention_scores(4 * 512.0, 4.0, 256.0, causal=True)) == \
        pytest.approx(expected)
    assert c.sources["attn_prefill"] == {"table": 1, "model": 0}
    # not causal: 512 queries per sequence over a 256-position cache, decode-style
    c.attention_scores(4 * 512.0, 4.0, 256.0)
    assert c.sources["attn_prefill"] == {"table": 1, "model": 0}
    assert c.sources["attn_decode"]["model"] == 1
    # without tables: the prefill parameter group answers prefill, not decode
    slow = CostModel(m, H100, replace(CostParams(), prefill_compute_eff=0.25))
    fast = CostModel(m, H100, CostParams())
    assert float(slow.attention_scores(4 * 512.0, 4.0, 256.0, causal=True)) > \
        1.5 * float(fast.attention_scores(4 * 512.0, 4.0, 256.0, causal=True))
    assert float(slow.attention_scores(4 * 512.0, 4.0, 256.0)) == \
        float(fast.attention_scores(4 * 512.0, 4.0, 256.0))


@pytest.mark.parametrize("predictor", ["analytic", "sim"])
def test_ttft_prices_prefill_attention_and_decoding_does_not(predictor):
    from specmoe.inputs.setup import resolve
    from specmoe.predictors.analytic import Analytic
    from specmoe.predictors.sim import Simulator

    def run(eff):
        system = H100.model_copy(update={"measured_tables": False,
                                         "efficiency": {"prefill_compute_eff": eff}})
        setup = resolve(model="mixtral-8x7b", hardware=system, policy="ondemand", batch=4,
                        prompt_len=2048, output_len=4)
        if predictor == "sim":
            r = Simulator(setup, iterations=3, seed=0).run()
            return r.ttft_ms, r.tpot_ms
        r = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
        return float(r.ttft_ms), float(r.tpot_ms)

    (ttft_slow, tpot_slow), (ttft_fast, tpot_fast) = run(0.01), run(1.0)
    assert ttft_slow > ttft_fast and tpot_slow == pytest.approx(tpot_fast)
