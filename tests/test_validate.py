"""Validation: reading end-to-end runs, finite static-batch rounds, the error table, and the
end-to-end stage of calibration (layer_overhead_us) on synthetic runs of known parameters."""

import json
from dataclasses import replace

import numpy as np
import pytest

from specmoe.app.cli.main import main
from specmoe.costs.ops import declared_params
from specmoe.errors import SpecMoEError
from specmoe.fit.calibrate import calibrate
from specmoe.fit.solver import FitOptions
from specmoe.fit.validate import predict_run, validate
from specmoe.inputs.hardware import load_system, save_system
from specmoe.measure.ingest import read_run
from specmoe.measure.trace import write_trace
from specmoe.predictors.rounds import expected_rounds

H100 = load_system("h100-pcie")
DEVICE = {"type": "cuda", "name": "NVIDIA H100 PCIe", "capability": "9.0", "memory_bytes": 85e9}
# The generating parameters start where calibration starts (declared_params), not from the
# shipped evidence for this GPU, so a fit can recover them.
TRUE = replace(
    declared_params(H100),
    gemm_compute_eff=0.6,
    hbm_eff=0.8,
    kernel_overhead_us=5.0,
    layer_overhead_us=40.0,
    link_eff=0.8,
    transfer_setup_us=8.0,
    attn_eff=0.7,
)
MODEL = {
    "hidden": 1024,
    "layers": 4,
    "heads": 8,
    "kv_heads": 2,
    "head_dim": 128,
    "experts": 8,
    "top_k": 2,
    "expert_ffn": 2048,
    "vocab": 1000,
    "dtype": "bfloat16",
    "shared_expert_ffn": 0,
}
POLICY = {
    "name": "ondemand",
    "gamma": 0,
    "draft_experts": 0,
    "draft_set": "hottemporal",
    "substitution": True,
    "spec_min_batch": 1,
    "resident_experts": None,
    "lru_slots": 0,
    "prefetch_hit_rate": 1.0,
    "expert_budget": None,
    "cutoff_layer": None,
    "draft_model_ratio": 0.05,
}


def _header(batch, policy, max_new=17, alpha=None, device=DEVICE):
    spec = policy["gamma"] > 0
    return {
        "source": "engine",
        "device": device,
        "model": MODEL,
        "workload": {
            "batch": batch,
            "prompt_lens": [32] * batch,
            "max_new_tokens": max_new,
            "speculative": spec,
            "synthetic_acceptance": alpha if spec else None,
        },
        "policy": {**POLICY, **policy},
        "engine": {"expert_slots": 8},
    }


def _e2e(path, batch, policy=None, params=TRUE, noise=0.0, seed=0, alpha=0.7, **kw):
    """An end-to-end trace whose iterations take what the analytic model says at `params`."""
    policy = {**POLICY, **(policy or {})}
    header = _header(batch, policy, alpha=alpha, **kw)
    write_trace(
        path, header, [{"name": "iteration", "cat": "iteration", "ts_us": 0.0, "dur_us": 1.0}]
    )
    run = read_run(path)
    sys_ = H100.model_copy(update={"efficiency": {}})
    pred = predict_run(run, sys_, params=params, predictor="analytic")
    n = round(pred["rounds"])
    rng = np.random.default_rng(seed)
    dur = pred["decode_s"] / n * 1e6 * np.exp(rng.normal(0, noise, n))
    ts = np.concatenate([[0.0], np.cumsum(dur)[:-1]])
    evs = [
        {
            "name": "iteration",
            "cat": "iteration",
            "ts_us": float(t),
            "dur_us": float(d),
            "step": i + 1,
        }
        for i, (t, d) in enumerate(zip(ts, dur))
    ]
    return write_trace(path, header, evs)


def _profile(tmp_path, params=TRUE, device=DEVICE):
    from specmoe.measure.ingest import device_identity

    sys_ = H100.model_copy(
        update={
            "name": "h100-true",
            "efficiency": {k: v for k, v in params.to_dict().items() if v is not None},
            "calibration": {"device_identity": device_identity(device)},
        }
    )
    save_system(sys_, tmp_path / "h100-true.yaml")
    return tmp_path / "h100-true.yaml"


# ------------------------------------------------------------------------------------ rounds


def test_expected_rounds_limits():
    assert expected_rounds(4, 3, 0.0, 17) == 16  # nothing accepted: one token per round
    assert expected_rounds(4, 3, 0.999999, 17) == 4  # all accepted: 16 tokens in rounds of 4
    # one sequence: about (max_new - 1) / τ rounds, a little more for the partial last round
    tau = (1 - 0.7**4) / 0.3
    r = expected_rounds(1, 3, 0.7, 101)
    assert 100 / tau < r < 100 / tau + 1.5
    # a static batch waits for its slowest sequence
    assert expected_rounds(16, 3, 0.7, 101) > expected_rounds(1, 3, 0.7, 101) + 2


# ------------------------------------------------------------------------------------ reading


def test_read_run(tmp_path):
    run = read_run(_e2e(tmp_path / "a.jsonl", 4))
    assert (run.batch, run.prompt_len, run.max_new_tokens, run.iterations) == (4, 32, 17, 16)
    assert run.model.hidden_size == 1024 and run.model.dtype_bytes == 2
    assert run.tokens_per_s == pytest.approx(4 * 16 / run.decode_s)


def test_read_run_errors_name_file_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    h = _header(2, POLICY)
    del h["workload"]["max_new_tokens"]
    write_trace(p, h, [{"name": "iteration", "cat": "iteration", "ts_us": 0, "dur_us": 5}])
    with pytest.raises(
        SpecMoEError, match=r"bad\.jsonl: workload: header lacks field 'max_new_tokens'"
    ):
        read_run(p)
    write_trace(p, _header(2, POLICY), [])
    with pytest.raises(SpecMoEError, match=r"bad\.jsonl: no decode iterations"):
        read_run(p)
    h = _header(2, POLICY)
    h["model"] = {**MODEL, "expert_ffn": None}
    write_trace(p, h, [{"name": "iteration", "cat": "iteration", "ts_us": 0, "dur_us": 5}])
    with pytest.raises(SpecMoEError, match=r"header model lacks field\(s\) \['expert_ffn'\]"):
        read_run(p)


def test_legacy_cache_fraction_becomes_explicit_residency(tmp_path):
    """Traces from before explicit residency: caching pinned round(f·E) per layer and kept the rest
    of its pool (slots − layers·pinned) as LRU; the policy read back says so in counts."""
    p = tmp_path / "c.jsonl"
    legacy = {k: v for k, v in POLICY.items() if k not in ("resident_experts", "lru_slots")}
    h = _header(2, {**legacy, "name": "caching", "cache_fraction": 0.25})
    h["engine"] = {"expert_slots": 8 + 4 * 2}
    write_trace(p, h, [{"name": "iteration", "cat": "iteration", "ts_us": 0, "dur_us": 5}])
    pol = read_run(p).policy
    assert (pol.resident_experts, pol.lru_slots) == (2, 8 + 4 * 2 - 4 * 2)


def test_measured_acceptance_when_not_synthetic(tmp_path):
    p = tmp_path / "s.jsonl"
    h = _header(2, {**POLICY, "name": "specmoe", "gamma": 3, "draft_experts": 2}, alpha=None)
    evs = [
        {"name": "iteration", "cat": "iteration", "ts_us": 0, "dur_us": 5},
        {"name": "accept", "cat": "accept", "ts_us": 5, "dur_us": 0, "accepted": [3, 1]},
        {"name": "accept", "cat": "accept", "ts_us": 6, "dur_us": 0, "accepted": [0, None]},
    ]
    write_trace(p, h, evs)
    run = read_run(p)
    from specmoe.inputs.workload import tau

    assert run.alpha_source.startswith("measured")
    assert float(tau(run.alpha, 3)) == pytest.approx(1 + 4 / 3, rel=1e-6)


# ------------------------------------------------------------------------------------ validating


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    paths = [_e2e(d / f"od-{b}.jsonl", b, noise=0.01, seed=b) for b in (1, 2, 4, 8, 16)]
    paths += [
        _e2e(
            d / f"sp-{b}.jsonl",
            b,
            {"name": "specmoe", "gamma": 3, "draft_experts": 2},
            noise=0.01,
            seed=b,
        )
        for b in (2, 8)
    ]
    paths += [
        _e2e(d / f"ca-{b}.jsonl", b, {"name": "caching", "resident_experts": 2}, noise=0.01)
        for b in (4, 16)
    ]
    return paths


def test_validate_with_the_true_parameters(runs, tmp_path):
    res = validate(runs, _profile(tmp_path), predictor="analytic")
    assert len(res["rows"]) == 9
    for r in res["rows"]:
        assert abs(r["error_pct"]) < 3.0, r  # 1% noise; spec rounds are an expectation
        assert r["device"] == "calibrated"
    assert res["summary"]["calibrated"]["median_abs_error_pct"] < 2.0


def test_validate_sees_a_wrong_profile(runs):
    """The datasheet profile (ideal roofline, no overheads) is far off: validation says so."""
    res = validate(runs, load_system("h100-pcie", ideal=True), predictor="analytic")
    assert res["summary"]["other"]["median_abs_error_pct"] > 20.0


def test_repeats_are_one_row_with_their_median(tmp_path):
    paths = [_e2e(tmp_path / f"r{i}.jsonl", 4, noise=0.05, seed=i) for i in range(3)]
    res = validate(paths, _profile(tmp_path), predictor="analytic")
    (row,) = res["rows"]
    meas = sorted(read_run(p).tokens_per_s for p in paths)
    assert row["repeats"] == 3 and row["measured_tokens_per_s"] == pytest.approx(meas[1])


def test_other_device_is_labelled(runs, tmp_path):
    res = validate(
        runs[:2], _profile(tmp_path, device={**DEVICE, "name": "NVIDIA L40S"}), predictor="analytic"
    )
    assert {r["device"] for r in res["rows"]} == {"other"}


def test_simulator_predictor_agrees(runs, tmp_path):
    pytest.importorskip("simpy")
    res = validate(runs[:2], _profile(tmp_path), predictor="sim")
    for r in res["rows"]:
        assert r["predictor"] == "sim"
        assert abs(r["error_pct"]) < 5.0 and abs(r["analytic_error_pct"]) < 3.0


# ------------------------------------------------------------------------------------ calibrating


def test_calibrate_fits_layer_overhead_from_runs(runs, tmp_path):
    """Op traces fix the op parameters; end-to-end runs then give layer_overhead_us."""
    from test_calibrate import _events, _write

    micro = _write(tmp_path / "micro.jsonl", _events(), params=TRUE, noise=0.005)
    cal = calibrate([micro, *runs], H100, opts=FitOptions(folds=3))
    assert cal.system.efficiency["layer_overhead_us"] == pytest.approx(40.0, rel=0.15)
    assert cal.holdout_mape()["iteration"]["mape"] < 0.03
    kinds = {t["kind"] for t in cal.system.calibration["traces"]}
    assert kinds == {"microbenchmark", "end-to-end"}


def test_calibrate_needs_enough_runs(runs, tmp_path):
    from test_calibrate import _events, _write

    micro = _write(tmp_path / "micro.jsonl", _events(), params=TRUE)
    with pytest.raises(
        SpecMoEError, match=r"end-to-end\): too few points for parameter 'layer_overhead_us'"
    ):
        calibrate([micro, *runs[:2]], H100)


def test_cli_validate(runs, tmp_path, capsys):
    md = tmp_path / "t.md"
    assert (
        main(
            [
                "validate",
                *map(str, runs[:3]),
                "--hardware",
                str(_profile(tmp_path)),
                "--predictor",
                "analytic",
                "--markdown",
                str(md),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "| ondemand |" in out and "median |error|" in out and md.read_text().startswith("| model")
    )
    assert (
        main(
            [
                "validate",
                str(runs[0]),
                "--hardware",
                str(_profile(tmp_path)),
                "--json",
                "--predictor",
                "analytic",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["rows"][0]["batch"] == 1
