"""Importer of aiconfigurator's measured kernel tables, on the small extracted fixture
(tests/data/aiconfigurator: NVIDIA aiconfigurator-core 0.12.0 rows, Apache-2.0; made by
experiments/make_aiconfigurator_fixture.py). CI never has the package itself."""
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from specmoe.errors import SpecMoEError
from specmoe.fit.op_map import op_spec
from specmoe.fit.points import collect_points, load_traces
from specmoe.measure import aiconfigurator as aic
from specmoe.measure.trace import read_trace

ROOT = Path(__file__).parent / "data" / "aiconfigurator" / "systems"


@pytest.fixture(scope="module")
def trace():
    return aic.import_tables("h100_sxm", "vllm", root=ROOT)


def test_rows_become_events_with_provenance(trace):
    prov = trace.header["provenance"]
    assert prov["package"] == "aiconfigurator-core" and prov["package_version"] == "0.12.0"
    assert prov["license"] == "Apache-2.0" and "NVIDIA" in prov["attribution"]
    assert prov["backend"] == "vllm" and prov["backend_version"] == "0.24.0"
    assert trace.header["source"] == "table" and trace.header["replay"] is True
    assert trace.header["device"]["name"] == "NVIDIA H100 80GB HBM3"
    t = prov["tables"]
    # fixture: 81 bf16 single-GPU MoE rows + 2 fp8 + 2 tensor-parallel; 74 bf16 GEMMs + 2 fp8;
    # attention: 2 sliding-window and 2 head_dim-512 rows dropped from each table
    assert (t["moe"]["rows_in_table"], t["moe"]["rows_imported"]) == (85, 81)
    assert (t["gemm"]["rows_in_table"], t["gemm"]["rows_imported"]) == (76, 74)
    assert t["decode_attention"]["rows_in_table"] - t["decode_attention"]["rows_imported"] == 4
    assert t["prefill_attention"]["rows_in_table"] - t["prefill_attention"]["rows_imported"] == 4
    assert len(trace.events) == sum(v["rows_imported"] for v in t.values())


def test_event_fields_match_the_table(trace):
    df = pd.read_parquet(ROOT / "data/h100_sxm/moe/vllm/0.24.0/moe_perf.parquet")
    row = df[(df.num_tokens == 256) & (df.hidden_size == 4096) & (df.distribution == "balanced")
             & (df.moe_dtype == "bfloat16") & (df.moe_tp_size == 1)].iloc[0]
    ev = next(e for e in trace.events if e["cat"] == "moe" and e["tokens"] == 256
              and e["shape"][1] == 4096 and e["distribution"] == "balanced")
    assert ev["dur_us"] == pytest.approx(row.latency * 1000)      # ms -> µs
    assert ev["shape"] == [256, 4096, 14336] and ev["top_k"] == 2 and ev["num_experts"] == 8
    assert ev["kernel_source"] == row.kernel_source and ev["dtype"] == "bfloat16"
    dec = [e for e in trace.events if e["cat"] == "attn" and e["phase"] == "decode"]
    assert all(len(e["shape"]) == 6 and e["shape"][1] == 1 and e["tokens"] == e["shape"][0]
               for e in dec)
    pre = [e for e in trace.events if e["cat"] == "attn" and e["phase"] == "prefill"]
    assert all(e["tokens"] == e["shape"][0] * e["shape"][1] for e in pre)


def test_balanced_routing_by_hand():
    # 1 token, 8 experts, top-2: stride 4, experts {0, 4}
    assert list(aic.balanced_loads(1, 8, 2)) == [1, 0, 0, 0, 1, 0, 0, 0]
    # 8 tokens: token i -> i and i + 4 (mod 8): every expert twice
    assert list(aic.balanced_loads(8, 8, 2)) == [2] * 8
    assert aic.routing_summary(8, 8, 2, "balanced") == (8.0, 2.0)
    # 3 tokens < stride: token i starts at floor(i·4/3) = 0, 1, 2 (the collector's .long())
    assert list(aic.balanced_loads(3, 8, 2)) == [1, 1, 1, 0, 1, 1, 1, 0]


def test_power_law_routing_is_skewed_and_conserves_pairs():
    rng = np.random.default_rng(0)
    loads = aic.power_law_loads(256, 128, 8, 1.2, rng)
    assert loads.sum() == 256 * 8 and loads.min() >= 0
    distinct, busiest = aic.routing_summary(256, 128, 8, "power_law_1.2")
    assert busiest > 256 * 8 / 128 * 3        # far above the even share
    assert distinct <= 128
    with pytest.raises(SpecMoEError, match="distribution"):
        aic.routing_summary(4, 8, 2, "zipf")


def test_one_kernel_per_shape_keeps_the_main_kernel():
    df = pd.DataFrame({"m": [1, 1, 2, 3], "n": [8] * 4, "k": [8] * 4,
                       "latency": [1.0, 5.0, 2.0, 3.0], "kernel_source": ["a", "b", "a", "b"]})
    df = pd.concat([df, pd.DataFrame({"m": [4], "n": [8], "k": [8], "latency": [4.0],
                                      "kernel_source": ["a"]})], ignore_index=True)
    kept = aic.one_kernel_per_shape(df, "gemm")
    assert list(kept.m) == [1, 2, 3, 4]                       # shape 3: only kernel b measured it
    assert list(kept.kernel_source) == ["a", "a", "b", "a"]   # shape 1: a, the table's main kernel


def test_backward_fill_of_versions_and_errors():
    _, used = aic.table_file("h100_sxm", "gemm", "vllm", "0.30.0", ROOT)
    assert used == "0.24.0"                                   # newest version <= the one asked
    assert aic.table_file("h100_sxm", "gemm", "vllm", "0.20.0", ROOT) is None
    assert aic.default_version("a100_sxm", "vllm", ROOT) == "0.14.0"   # per-GPU override
    with pytest.raises(SpecMoEError, match="gpu='h999'"):
        aic.import_tables("h999", "vllm", root=ROOT)
    with pytest.raises(SpecMoEError, match="backend="):
        aic.import_tables("h100_sxm", "tgi", root=ROOT)


def test_written_trace_feeds_calibration(trace, tmp_path):
    path = aic.write(trace, tmp_path / "h100-vllm.jsonl.gz")
    back = read_trace(path)
    assert back.header["provenance"] == trace.header["provenance"]
    points = collect_points(load_traces([path]))
    assert {p.cat for p in points} == {"moe", "gemm", "attn_scores", "attn_prefill"}
    moe = [p for p in points if p.cat == "moe" and p.dims[1] == 4096]
    tokens = {e["tokens"] for e in trace.events if e["cat"] == "moe" and e["shape"][1] == 4096}
    assert {p.args[0] for p in moe} == {2.0 * t for t in tokens}        # pairs = tokens x top_k
    assert max(p.args[2] for p in moe) > min(p.args[2] for p in moe)   # busiest expert varies


def test_cli_import(tmp_path, monkeypatch, capsys):
    from specmoe.app.cli.main import main

    monkeypatch.setattr(aic, "data_root", lambda: ROOT)
    rc = main(["measurements", "import", "aiconfigurator", "--gpu", "h100_sxm", "--backend",
               "vllm", "--backend", "sglang", "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "skip h100_sxm/sglang" in out
    assert read_trace(tmp_path / "h100_sxm-vllm.jsonl.gz").header["provenance"]["backend"] == "vllm"


def test_hybrid_keys_match_the_imported_tables(trace):
    """A CostModel with the imported tables answers measured shapes from them (same keys)."""
    from specmoe.costs.ops import CostModel
    from specmoe.costs.tables import Tables
    from specmoe.inputs.hardware import load_system

    tables = Tables.from_traces([trace])
    h100 = load_system("h100-sxm")
    mixtral = op_spec(2.0, hidden=4096, ffn=14336, experts=8, top_k=2)
    cm = CostModel(mixtral, h100, tables=tables)
    ev = next(e for e in trace.events if e["cat"] == "moe" and e["tokens"] == 256
              and e["shape"][1] == 4096 and e["distribution"] == "balanced")
    assert float(cm.fused_moe(256.0, 8.0)) == pytest.approx(ev["dur_us"] * 1e-6)
    assert float(cm.fused_moe(10**6, 8.0)) == float(CostModel(mixtral, h100).fused_moe(10**6, 8.0))
    assert cm.sources["moe"] == {"table": 1, "model": 1}
    attn = op_spec(2.0, hidden=4096, heads=32, kv_heads=8, head_dim=128)
    cm = CostModel(attn, h100, tables=tables)
    ev = next(e for e in trace.events if e["cat"] == "attn" and e["phase"] == "decode"
              and e["shape"][0] == 8)
    assert float(cm.decode_attention(8.0, ev["shape"][2])) == pytest.approx(ev["dur_us"] * 1e-6)
    assert cm.sources["attn_decode"] == {"table": 1, "model": 0}
