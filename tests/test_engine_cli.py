"""engine run / bench / microbench through a small argparse parser; trace contents and header."""
import argparse
from collections import Counter

import pytest
from specmoe.engine.config import MoEConfig
from specmoe.engine.generate import Engine
from specmoe.engine.microbench import KINDS, run_microbench
from specmoe.engine.tracer import Tracer
from specmoe.engine.weights import random_model

from specmoe.app.cli.engine import add_engine_commands, bench_grid
from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import make_policy
from specmoe.measure.trace import CATEGORIES, read_trace

SMALL = ["--layers", "2", "--dtype", "float32", "--prompt-len", "6", "--max-new-tokens", "6"]


def _parse(argv):
    p = argparse.ArgumentParser(prog="specmoe")
    add_engine_commands(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_run_prints_throughput_acceptance_and_bytes(tmp_path, capsys):
    trace = tmp_path / "run.jsonl.gz"
    args = _parse(["engine", "run", *SMALL, "--policy", "specmoe", "--gamma", "3",
                   "--draft-experts", "2", "--batch", "2", "--trace", str(trace)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "accepted tokens per verification" in out and "bytes GB" in out
    t = read_trace(trace)
    assert t.header["policy"]["name"] == "specmoe" and t.header["result"]["verifications"] > 0
    assert t.header["model"]["layers"] == 2 and t.header["device"]["type"] == "cpu"
    assert t.header["synthetic_acceptance"] is None


def test_run_with_a_prompt_and_synthetic_acceptance(capsys):
    args = _parse(["engine", "run", *SMALL, "--prompt", "1,2,3", "--ids", "--policy", "specmoe",
                   "--gamma", "2", "--draft-experts", "1", "--synthetic-acceptance", "0.5"])
    args.func(args)
    assert "synthetic acceptance 0.5" in capsys.readouterr().out


def test_bench_grid_writes_one_trace_per_run_and_resumes(tmp_path, capsys):
    argv = ["engine", "bench", *SMALL, "--policies", "ondemand,specmoe", "--batches", "1,2",
            "--gammas", "2", "--draft-experts", "1,2", "--out", str(tmp_path), "--warmup", "0"]
    args = _parse(argv)
    runs = bench_grid(args)
    assert len(runs) == 2 + 2 * 2  # ondemand x 2 batches, specmoe x 2 batches x 2 N
    args.func(args)
    files = sorted(p.name for p in tmp_path.glob("*.jsonl.gz"))
    assert files == sorted(r["file"] for r in runs)
    t = read_trace(tmp_path / "specmoe-b2-g2-n1.jsonl.gz")
    assert t.header["workload"]["batch"] == 2 and t.header["policy"]["draft_experts"] == 1
    (tmp_path / "ondemand-b1-g0-n0.jsonl.gz").unlink()
    capsys.readouterr()
    _parse(argv).func(_parse(argv))
    assert "6 runs, 5 already done" in capsys.readouterr().out
    assert (tmp_path / "ondemand-b1-g0-n0.jsonl.gz").exists()


def test_microbench_quick_writes_every_category(tmp_path):
    args = _parse(["engine", "microbench", "--quick", "--out", str(tmp_path / "mb.jsonl"),
                   "--dtype", "float32", "--reps", "2"])
    args.func(args)
    t = read_trace(tmp_path / "mb.jsonl")
    cats = {e["cat"] for e in t.events}
    assert cats == set(KINDS)
    for e in t.events:
        assert e["dur_us"] > 0 and len(e["samples_us"]) == 2
        assert "bytes" in e
        if e["cat"] in ("gemm", "expert", "attn", "cpu_expert"):
            assert e["flops"] > 0 and e["shape"]
    with pytest.raises(SpecMoEError, match="microbench kinds"):
        run_microbench(tmp_path / "x.jsonl", kinds=["gemm", "nvlink"], quick=True)


def test_engine_trace_has_every_op_and_the_synthetic_label(tmp_path):
    cfg = MoEConfig(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2,
                    expert_ffn=32, vocab=64, max_seq_len=32, max_batch=2)
    tracer = Tracer("cpu")
    eng = Engine(random_model(cfg), make_policy("specmoe", gamma=2, draft_experts=2), tracer=tracer)
    res = eng.generate([[1, 2, 3], [4, 5]], 6, synthetic_acceptance=0.7)
    t = read_trace(tracer.write(tmp_path / "e.jsonl"))
    assert (
        t.header["synthetic_acceptance"] == 0.7
        and t.header["workload"]["synthetic_acceptance"] == 0.7
    )
    cats = Counter(e["cat"] for e in t.events)
    for cat in (
        "attn",
        "gate",
        "moe",
        "expert",
        "h2d",
        "draft_step",
        "verify",
        "accept",
        "iteration",
        "prefill",
    ):
        assert cats[cat] > 0, cat
    assert set(cats) <= set(CATEGORIES)
    assert cats["verify"] == res.stats.verifications == cats["accept"]
    assert cats["draft_step"] == 2 * res.stats.verifications
    forwards = 1 + 3 * res.stats.verifications  # prefill, then 2 drafts + 1 verify per round
    assert cats["attn"] == cats["gate"] == cats["moe"] == forwards * cfg.layers
    accepted = sum(e["tokens"] for e in t.by_cat("accept"))
    assert accepted == res.stats.sequence_rounds * res.stats.tokens_per_verify
    assert all(e["phase"] != "draft" for e in t.by_cat("h2d"))
    ts = [e["ts_us"] for e in t.events]
    assert ts == sorted(ts) and all(e["dur_us"] >= 0 for e in t.events)
    # eagle with a separate draft model, and the cpu policy's host experts, trace too
    tracer2 = Tracer("cpu")
    eng2 = Engine(random_model(cfg), make_policy("cpu"), tracer=tracer2)
    eng2.generate([[1, 2, 3]], 4)
    assert any(e["cat"] == "cpu_expert" for e in tracer2.events())



def test_bench_ends_with_a_summary_table(tmp_path, capsys):
    args = _parse(
        [
            "engine",
            "bench",
            *SMALL,
            "--policies",
            "ondemand,specmoe",
            "--batches",
            "1",
            "--gammas",
            "2",
            "--draft-experts",
            "1",
            "--out",
            str(tmp_path),
            "--warmup",
            "0",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("engine bench ("):]
    assert "tokens/s" in table and "GB host→device" in table and "tokens per verification" in table
    rows = [ln for ln in table.splitlines() if ln.strip("│ ").startswith(("ondemand", "specmoe"))]
    assert len(rows) == 2 and "-" in rows[0]          # ondemand does not speculate: no acceptance


def test_run_takes_and_prints_text_with_the_tiny_models_tokenizer(capsys):
    pytest.importorskip("tokenizers")
    from pathlib import Path

    tiny = Path(__file__).resolve().parents[1] / "experiments" / "tiny_moe"
    args = _parse(
        [
            "engine",
            "run",
            "--weights",
            str(tiny),
            "--prompt",
            "def add(a, b):",
            "--max-new-tokens",
            "4",
            "--policy",
            "specmoe",
            "--gamma",
            "2",
            "--draft-experts",
            "2",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "def add(a, b): |" in out and "seq 0: [" not in out
    ids = _parse(
        [
            "engine",
            "run",
            "--weights",
            str(tiny),
            "--prompt",
            "1,2,3",
            "--ids",
            "--max-new-tokens",
            "3",
        ]
    )
    ids.func(ids)
    assert "seq 0: [" in capsys.readouterr().out


def test_run_text_prompt_without_a_tokenizer_says_use_ids():
    args = _parse(["engine", "run", *SMALL, "--prompt", "hello"])
    with pytest.raises(SpecMoEError, match="--ids"):
        args.func(args)
