"""The cost model's GPU-kernel refinements on hand-computed shapes: tile/wave quantization, MoE
block padding, the L2 replay term, op-class groups, decode-attention work items, the physical
bounds of calibration, and the measured-table hybrid's choice inside vs outside a table."""
from dataclasses import replace

import numpy as np
import pytest

from specmoe.costs.ops import CostModel, CostParams
from specmoe.costs.tables import Tables
from specmoe.fit.calibrate import calibrate
from specmoe.fit.op_map import op_spec
from specmoe.fit.solver import BOUNDS, FitOptions
from specmoe.inputs.hardware import load_system

H100 = load_system("h100-sxm")           # 132 SMs, 50 MiB L2, 3350 GB/s, 989.5 TFLOP/s bf16
GEOM = {"tile_m": 128.0, "tile_n": 128.0, "moe_block_tokens": 64.0}


def cm(params=None, replay=False, tables=None, **dims):
    spec = op_spec(2.0, **dims)
    return CostModel(spec, H100, params or replace(CostParams(), **GEOM), replay, tables)


def test_moe_tokens_per_expert_padded_to_the_block():
    c = cm()
    # 640 pairs on 8 experts: 80 each -> 2 blocks of 64 -> 128 each -> 1024
    assert c.padded_pairs(640.0, 8.0) == 1024.0
    # busiest expert 277 tokens -> 5 blocks (320); the other 7 share 363: 51.9 -> 1 block each
    assert c.padded_pairs(640.0, 8.0, 277.0) == 320.0 + 7 * 64.0
    # exactly one block per expert: no padding
    assert c.padded_pairs(512.0, 8.0) == 512.0
    assert cm(CostParams()).padded_pairs(640.0, 8.0) == 640.0   # no block: no padding


def test_waves_are_ceil_ctas_over_sms():
    c = cm()
    # 256 x (128·133): 2 x 133 = 266 CTAs -> ceil(266/132) = 3 waves of 132 slots
    assert c.wave_factor(256.0, 128.0 * 133) == pytest.approx(3 * 132 / 266)
    # 264 CTAs fill exactly 2 waves: no loss
    assert c.wave_factor(256.0, 128.0 * 132) == pytest.approx(1.0)
    # m = 1: rows padded to a 16-row tile; 32 CTAs < 132 SMs: split-K fills the GPU
    assert c.wave_factor(1.0, 4096.0) == pytest.approx(16.0)
    # ... unless the kernel cannot split K (the fused MoE): one partial wave
    assert c.wave_factor(1.0, 4096.0, split_k=False) == pytest.approx(16.0 * 132 / 32)
    assert cm(CostParams()).wave_factor(1.0, 4096.0) == 1.0


def test_wave_quantization_shows_in_a_compute_bound_gemm():
    p = replace(CostParams(), **GEOM)
    # 1024 x 16896 x 65536: 8 row tiles x 132 column tiles = 1056 CTAs = 8 full waves
    t_full = float(cm(p).dense_gemm(1024.0, 128.0 * 132, 65536.0))
    # one more column tile: 1064 CTAs -> a 9th wave, 9/8 the time for 133/132 the work
    t_tail = float(cm(p).dense_gemm(1024.0, 128.0 * 133, 65536.0))
    assert t_tail / t_full == pytest.approx(9 / 8, rel=1e-6)
    plain = CostParams()
    assert float(cm(plain).dense_gemm(1024.0, 128.0 * 133, 65536.0)) / \
        float(cm(plain).dense_gemm(1024.0, 128.0 * 132, 65536.0)) == pytest.approx(133 / 132)


TILED = replace(CostParams(), gemm_tiles=1.0)


def test_smaller_tiles_reach_less_of_the_peak():
    c = cm(replace(TILED, gemm_tile_half=64.0))
    # best of GEMM_TILES: 128x256, T = 2·128·256/384 = 170.67 -> 170.67/234.67 = 8/11
    assert c.tile_eff(64.0, 64.0) == pytest.approx((64 / 128) / (8 / 11))      # T = 64
    assert c.tile_eff(128.0, 128.0) == pytest.approx((128 / 192) / (8 / 11))   # T = 128
    assert c.tile_eff(256.0, 128.0) == pytest.approx(1.0)
    assert cm(TILED).tile_eff(64.0, 64.0) == 1.0        # no half: every tile at the peak
    # a parameter drawn per interval sample broadcasts against the shapes
    draws = cm(replace(TILED, gemm_tile_half=np.array([[0.0], [64.0]])))
    t = draws.dense_gemm(np.array([1024.0, 4096.0]), 2112.0, 16384.0)
    assert t.shape == (2, 2) and np.all(t[1] >= t[0])


def test_gemm_takes_the_fastest_tiling():
    # 1024 x 2112 x 16384, compute-bound (71.6 µs of FLOPs vs 32 µs of bytes) on 132 SMs:
    # 128x64 tiles make 8 x 33 = 264 CTAs = 2 full waves: no loss
    m, n, k = 1024.0, 64.0 * 33, 16384.0
    ideal = 2 * m * n * k / 989.5e12
    assert float(cm(TILED).dense_gemm(m, n, k)) == pytest.approx(ideal, rel=1e-9)
    # the one 128x128 tile: 8 x 17 = 136 CTAs -> 2 waves (264 slots), columns padded to 2176:
    # 264/136 x 2176/2112 = 2
    assert float(cm().dense_gemm(m, n, k)) == pytest.approx(2 * ideal, rel=1e-9)


def test_split_k_pays_for_its_partials():
    # 16 x 128 x 8192: 33.9 ns of FLOPs, 2,363,392 bytes (0.71 µs); one 16x64 tile pair alone
    # would take 132/2 x the FLOP time. Splitting K over 2·s CTAs cuts that but writes and
    # reads s fp32 partials of the output: 2 · s · 16 · 128 · 4 = 16384·s bytes.
    # 64-column tiles, s = 4: 8 CTAs -> 132/8 x 33.9 ns = 0.56 µs < (2,363,392 + 65,536) bytes
    # = 0.725 µs; s = 8: 0.28 µs < 0.745 µs; s = 2: 1.12 µs of FLOPs. Best: s = 4.
    t = float(cm(TILED).dense_gemm(16.0, 128.0, 8192.0))
    assert t == pytest.approx((2_363_392 + 4 * 16_384) / 3350e9, rel=1e-9)
    # 16 x 64 x 128: a split keeps >= 64 of K, so s <= 2: 2 CTAs -> 132/2 x 262,144 FLOPs
    # (17.5 ns) > 22,528 + 16,384 bytes (11.6 ns). s = 4 would give 16.5 ns of bytes.
    t = float(cm(TILED).dense_gemm(16.0, 64.0, 128.0))
    assert t == pytest.approx(66 * 262_144 / 989.5e12, rel=1e-9)


def test_l2_term_only_when_replayed_and_it_fits():
    p = replace(CostParams(), hbm_eff=0.8, l2_bw_factor=2.5)
    small = (1.0, 2048.0, 2048.0)    # 8 MiB of weights: fits in 50 MiB
    big = (1.0, 8192.0, 8192.0)      # 128 MiB: does not
    hbm_small = float(cm(p).dense_gemm(*small))
    l2_small = float(cm(p, replay=True).dense_gemm(*small))
    assert hbm_small / l2_small == pytest.approx(2.5 / 0.8, rel=1e-3)
    assert float(cm(p, replay=True).dense_gemm(*big)) == float(cm(p).dense_gemm(*big))


def test_op_class_groups_and_their_fallback():
    p = replace(CostParams(), hbm_eff=0.5)
    shared = float(cm(p, hidden=4096, ffn=14336).experts(2.0, 2.0))
    own = float(cm(replace(p, moe_hbm_eff=1.0), hidden=4096, ffn=14336).experts(2.0, 2.0))
    assert shared / own == pytest.approx(2.0, rel=1e-3)     # memory-bound: bandwidth ratio
    # the dense GEMM does not move with the MoE group
    assert float(cm(replace(p, moe_hbm_eff=1.0)).dense_gemm(1.0, 4096.0, 4096.0)) == \
        float(cm(p).dense_gemm(1.0, 4096.0, 4096.0))


def test_decode_attention_work_items_in_waves():
    p = replace(CostParams(), attn_item_us=4.0, attn_fixed_us=2.0)
    c = cm(p, heads=32, kv_heads=8, head_dim=128, hidden=4096)
    # 264 sequences x 8 kv heads = 2112 items -> 16 waves of 132 -> 2 + 16 x 4 µs
    assert float(c.attention_scores(264.0, 264.0, 2.0)) == pytest.approx(66e-6)
    # one more sequence: 2120 items -> a 17th, partial wave
    assert float(c.attention_scores(265.0, 265.0, 2.0)) == pytest.approx(70e-6)
    # long contexts: the KV stream dominates again
    long = float(c.attention_scores(1.0, 1.0, 131072.0))
    kv = 131072 * 2 * 8 * 128 * 2
    assert long == pytest.approx(2e-6 + kv / 3350e9, rel=1e-6)


def test_fit_never_exceeds_the_datasheet_peak(tmp_path):
    """Kernels that look faster than the HBM peak (synthetic: 1.3x) pin hbm_eff at its bound 1."""
    from specmoe.measure.trace import write_trace

    events = []
    for m in (1, 2, 4, 8):
        for n, k in ((4096, 4096), (8192, 8192), (14336, 4096), (4096, 14336)):
            t = 2.0 * n * k / (1.3 * 3350e9) + 3e-6
            events.append({"name": "gemm", "cat": "gemm", "ts_us": 0, "dur_us": t * 1e6,
                           "shape": [m, n, k], "dtype": "bfloat16"})
    path = write_trace(tmp_path / "fast.jsonl", {"source": "engine", "device": {
        "type": "cuda", "name": "synthetic"}}, events)
    calib = calibrate([path], H100, opts=FitOptions(folds=2))
    par = calib.system.calibration["parameters"]
    assert par["hbm_eff"]["value"] <= 1.0 and par["hbm_eff"]["at_bound"]
    for name in ("gemm_compute_eff", "hbm_eff", "attn_eff", "moe_compute_eff", "moe_hbm_eff",
                 "prefill_compute_eff"):
        assert BOUNDS[name][1] == 1.0, name


def test_hybrid_uses_the_table_inside_its_range_and_the_model_outside():
    # measured GEMM n = k = 4096 at m = 16 and 64; key (n, k), axis m
    key = (4096.0, 4096.0)
    tables = Tables([("gemm", key, 16.0, 10e-6), ("gemm", key, 64.0, 40e-6)])
    c = cm(tables=tables)
    model = cm()
    m = np.array([16.0, 32.0, 64.0, 128.0, 8.0])
    t = c.dense_gemm(m, 4096.0, 4096.0)
    assert t[0] == pytest.approx(10e-6) and t[2] == pytest.approx(40e-6)
    assert t[1] == pytest.approx(20e-6)          # log-log midway: sqrt(10 x 40)
    assert t[3] == float(model.dense_gemm(128.0, 4096.0, 4096.0))     # above the range: model
    assert t[4] == float(model.dense_gemm(8.0, 4096.0, 4096.0))        # below the range: model
    assert c.sources["gemm"] == {"table": 3, "model": 2}
    # another shape: no table, the model
    other = (32.0, 8192.0, 4096.0)
    assert float(c.dense_gemm(*other)) == float(model.dense_gemm(*other))
    assert c.sources["gemm"] == {"table": 3, "model": 3}


def test_split_k_pays_a_fixed_time_for_its_reduction():
    # 16 x 128 x 8192 splits K 4 ways at 0.725 µs (test above); at 5 µs per split-K GEMM the
    # best is no split: two 16x64 CTAs, 132/2 x the 33.9 ns of FLOPs = 2.24 µs
    t = float(cm(replace(TILED, split_k_us=5.0)).dense_gemm(16.0, 128.0, 8192.0))
    assert t == pytest.approx(66 * 2 * 16 * 128 * 8192 / 989.5e12, rel=1e-9)


def test_few_ctas_cannot_draw_the_whole_bandwidth():
    # 16 x 64 x 8192 unsplit (a split would cost 100 µs): one 16x64 CTA streams (16 + 64) rows
    # of 8192 bf16 = 1,310,720 bytes through one SM at 2x its fair share, 2 · 3350/132 GB/s
    p = replace(TILED, split_k_us=100.0, sm_bw_share=2.0)
    t = float(cm(p).dense_gemm(16.0, 64.0, 8192.0))
    assert t == pytest.approx(1_310_720 / (2 * 3350e9 / 132), rel=1e-9)
    # without the per-SM limit: the FLOPs of one CTA's wave, 132 x 16.96 ns
    t = float(cm(replace(TILED, split_k_us=100.0)).dense_gemm(16.0, 64.0, 8192.0))
    assert t == pytest.approx(132 * 2 * 16 * 64 * 8192 / 989.5e12, rel=1e-9)
