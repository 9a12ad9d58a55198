"""The CPU loop (DESIGN.md §10): engine on this CPU -> traces -> calibrated cpu-local profile ->
predictions of held-out end-to-end runs.

The fit tests refit the committed trace set (experiments/data/cpu/, measured by
`python experiments/calibrate_cpu.py traces`) and check its errors; the live test runs the engine
once, here and now, and predicts it with the committed profile.

Bounds. This machine has 2 vCPUs shared with other work. Measured on the committed set (see
experiments/reports/calibration_cpu.md): repeats of one end-to-end configuration differ by a
median NOISE_PCT of their median throughput, and one op configuration's timings have an
interquartile range of 10-40% of their median. A prediction cannot be checked more finely than
that, so the bounds are a small multiple of this noise, not the 5% GPU targets of DESIGN.md §11:
- per-op hold-out MAPE <= OP_MAPE (measured 7-15% per op);
- held-out end-to-end tokens/s, policies that the models describe on this device (overlap is
  left out: nothing overlaps on a CPU, see the report): median |error| <= E2E_MEDIAN,
  max <= E2E_MAX;
- the live run: |error| <= LIVE (the largest spread of repeats measured), one unrepeated run
  whose throughput is taken on the process's CPU time (wall time / (wall/CPU)), so that other
  work on the machine does not count; beyond LIVE_INTERFERENCE that correction is not trusted and
  the run is skipped, not failed.
"""
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
import calibrate_cpu as cc

from specmoe.fit.validate import predict_run, summarize, validate
from specmoe.inputs.hardware import load_system
from specmoe.measure.ingest import device_identity, read_run

NOISE_PCT = 19
OP_MAPE = 0.25
E2E_MEDIAN = 20.0
E2E_MAX = 55.0
LIVE = 50.0
LIVE_INTERFERENCE = 2.0

pytestmark = pytest.mark.skipif(not (REPO / "experiments" / "data" / "cpu" / "e2e").is_dir(),
                                reason="CPU trace set not committed")


@pytest.fixture(scope="module")
def calib():
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield cc.calibrate_cpu()
    finally:
        os.chdir(cwd)


def test_per_op_holdout_error(calib):
    mape = calib.holdout_mape()
    assert {"attn", "expert", "gate", "h2d", "iteration"} <= set(mape)
    for op, m in mape.items():
        assert m["mape"] <= OP_MAPE, (op, m)
    # the loop fits what this device shows and says what it cannot see
    assert calib.system.calibration["device"]["type"] == "cpu"
    assert set(calib.system.efficiency) >= {"gemm_compute_eff", "link_eff", "expert_overhead_us"}


def test_heldout_end_to_end_error(calib):
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        res = validate(cc.heldout_traces(), calib.system, predictor="analytic")
    finally:
        os.chdir(cwd)
    s = summarize(res["rows"], ["overlap"])["calibrated"]
    assert s["configurations"] >= 15
    assert s["median_abs_error_pct"] <= E2E_MEDIAN, s
    assert s["max_abs_error_pct"] <= E2E_MAX, s
    # overlap: the models hide copies behind compute, this device cannot, so it is predicted fast
    overlap = [r for r in res["rows"] if r["policy"] == "overlap"]
    assert overlap and all(r["error_pct"] > 0 for r in overlap)


@pytest.mark.artifacts
def test_committed_profile_matches_the_fit(calib):
    committed = load_system("cpu-local-calibrated")
    for name, value in calib.system.efficiency.items():
        assert committed.efficiency[name] == pytest.approx(value, rel=1e-6), name


def test_live_engine_run_is_predicted(tmp_path):
    """One small engine run now, on this CPU, against the committed profile."""
    torch = pytest.importorskip("torch")
    import engine_runs as er
    from specmoe.engine.weights import random_model

    profile = load_system("cpu-local-calibrated")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = er.model_config("cpu-small", 2, 2, er.seq_len_needed(8, 8, 0))
        w = random_model(cfg, seed=0)
        path = tmp_path / "live.jsonl.gz"
        t0 = time.perf_counter()
        er.run_one(w, {"policy": "ondemand", "batch": 2, "gamma": 0, "draft_experts": 0}, path,
                   prompt_len=8, max_new_tokens=8, max_tries=5)
        elapsed = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    run = read_run(path)
    if device_identity(run.header["device"]) != profile.calibration["device_identity"]:
        pytest.skip(
            f"profile calibrated on {profile.calibration['device_identity']}, this is "
            f"{device_identity(run.header['device'])}: "
            "recalibrate with experiments/calibrate_cpu.py"
        )
    ratio = run.header["interference"]["wall_over_cpu"]
    if ratio > LIVE_INTERFERENCE:
        pytest.skip(f"run slowed by other work (wall/CPU {ratio:.2f} > {LIVE_INTERFERENCE})")
    measured = run.tokens_per_s * max(ratio, 1.0)
    pred = predict_run(run, profile, predictor="analytic")
    err = 100 * (pred["tokens_per_s"] - measured) / measured
    assert abs(err) <= LIVE, (err, measured, pred["tokens_per_s"], ratio)
    assert elapsed < 30
