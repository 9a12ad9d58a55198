"""Microbenchmarks time the engine's own ops, in events calibration reads row for row."""
import torch
from specmoe.engine import microbench as mb

from specmoe.fit.points import collect_points
from specmoe.measure.trace import read_trace


def test_rotation_exceeds_twice_l2(monkeypatch):
    assert mb.rotation(1 << 20, torch.device("cpu")) == 1  # a CPU times one copy
    monkeypatch.setattr(mb, "l2_bytes", lambda d: 50 << 20)
    cuda = torch.device("cuda")
    assert mb.rotation(10 << 20, cuda) == mb.ROTATION_MAX  # 10 needed, capped
    assert mb.rotation(30 << 20, cuda) == 4 and mb.rotation(200 << 20, cuda) == 1


def test_time_rotates_inputs_and_counts_samples():
    calls = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    s = mb._time(fns, torch.device("cpu"), reps=4, warmup=1)
    assert len(s) == 4 and all(v > 0 for v in s)
    assert calls == [0, 1, 2] + [0, 1, 2, 0]  # warm-up touches every copy, then round robin


def test_moe_and_attention_events_are_calibration_points(tmp_path):
    path = mb.run_microbench(tmp_path / "m.jsonl", kinds=["moe", "attn"], quick=True,
                             dtype="float32", reps=2)
    t = read_trace(path)
    moe = t.by_cat("moe")
    assert [e["tokens"] for e in moe] == [1, 2, 4, 8]
    for e in moe:
        assert e["name"] == "expert_loop" and e["backend"] == "torch"  # the CPU engine's path
        assert 1 <= e["experts"] <= min(e["num_experts"], e["tokens"] * e["top_k"])
        assert e["shape"] == [e["tokens"], 64, 128] and e["flops"] == 6 * e["tokens"] * 2 * 64 * 128
    attn = t.by_cat("attn")
    assert {(e["batch"], e["context"], e["shape"][1]) for e in attn} == {
        (b, c, q) for b in (1, 4) for c in (16, 64) for q in (1, 3)}
    for e in attn:
        b, q, c, h, kv, d = e["shape"]
        assert e["bytes"] == 2 * b * c * kv * d * 4 + 2 * b * q * h * d * 4  # K/V read once
    pts = collect_points([t])
    cats = {p.cat for p in pts}
    assert cats == {"moe", "attn_scores"}
    moe_pts = sorted(p.args for p in pts if p.cat == "moe")
    # (token-expert pairs, distinct experts, busiest expert's tokens: default an even spread)
    assert moe_pts == sorted(
        (e["tokens"] * 2.0, float(e["experts"]),
         float(e.get("max_expert_tokens") or e["tokens"] * 2.0 / e["experts"]))
        for e in moe
    )


def test_head_start_covers_the_hosts_enqueue_time_on_an_idle_stream():
    """A span opened on an idle stream sleeps the device as long as the host took to enqueue that
    span before (moving average, capped), so its begin event fires when the work is queued."""
    from specmoe.engine.tracer import HeadStart

    slept = []
    h = HeadStart(slept.append, cap_us=300.0, weight=0.5)
    assert h.before("attn", idle=True) == 0.0 and slept == []   # nothing known yet
    h.after("attn", 100.0)
    assert h.before("attn", idle=False) == 0.0                  # a busy stream needs none
    assert h.before("attn", idle=True) == 100.0 and slept == [100.0]
    h.after("attn", 200.0)
    assert h.before("attn", idle=True) == 150.0                 # moving average
    h.after("gate", 5000.0)
    assert h.before("gate", idle=True) == 300.0                 # capped
    assert slept == [100.0, 150.0, 300.0]
