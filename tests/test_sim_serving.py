"""Simulator serving mode, trace output (specmoe.trace/1 and Chrome) and the `simulate` command."""

import json

import numpy as np
import pytest

from specmoe.app.cli.main import main
from specmoe.inputs.setup import resolve
from specmoe.measure.trace import read_trace, to_chrome
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.sim import simulate


def test_single_request_ttft_is_one_prefill():
    # One request alone: its TTFT is a prefill of one prompt; uniform routing at 512 tokens uses all
    # experts, so the analytic prefill is exact.
    r = simulate(policy="ondemand", batch=4, arrivals=[0.0], output_len=3, prompt_len=512)
    setup = resolve(policy="ondemand", batch=1, output_len=3, prompt_len=512)
    an = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    assert r.ttft_ms == pytest.approx(float(an.ttft_ms), rel=0.01)
    assert r.requests["completed"] == 1 and r.iterations == 2  # tokens 2 and 3


def test_poisson_serving_completes_every_request():
    r = simulate(
        policy="specmoe",
        model="olmoe-1b-7b",
        batch=8,
        gamma=3,
        serving=True,
        rate=20.0,
        requests=24,
        output_len=16,
        prompt_len=64,
        seed=5,
    )
    d = r.to_dict()
    assert d["requests"]["completed"] == 24 and d["mode"] == "serving"
    assert r.tokens == 24 * 16
    t, f = r.tpot_ms_percentiles, r.ttft_ms_percentiles
    assert 0 < t["p50"] <= t["p90"] <= t["p99"] and 0 < f["p50"] <= f["p90"] <= f["p99"]
    assert "prefill" in r.breakdown


def test_heavier_load_waits_longer():
    kw = dict(
        policy="ondemand",
        model="olmoe-1b-7b",
        batch=4,
        serving=True,
        requests=30,
        output_len=8,
        prompt_len=64,
        seed=1,
    )
    light, heavy = simulate(rate=1.0, **kw), simulate(rate=1000.0, **kw)
    assert heavy.ttft_ms_percentiles["p90"] > light.ttft_ms_percentiles["p90"]


def test_trace_schema_streams_and_chrome_export(tmp_path):
    r = simulate(policy="cpu", batch=8, iterations=2, trace=True)
    path = r.write_trace(tmp_path / "sim.jsonl.gz")
    t = read_trace(path)
    assert t.header["source"] == "sim" and t.header["schema"] == "specmoe.trace/1"
    streams = {e["stream"] for e in t.events}
    assert {"gpu", "cpu", "d2h"} <= streams
    cats = {e["cat"] for e in t.events}
    assert {"attn", "gate", "moe", "cpu_expert"} <= cats
    chrome = to_chrome(t)
    spans = [e for e in chrome["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(t.events)
    # Ops on one stream never overlap.
    for s in ("gpu", "h2d", "cpu"):
        ev = sorted((e["ts_us"], e["dur_us"]) for e in t.events if e["stream"] == s)
        assert all(a[0] + a[1] <= b[0] + 1e-6 for a, b in zip(ev, ev[1:])), s


def test_h2d_stream_in_trace_and_trace_off_by_default():
    r = simulate(policy="overlap", batch=4, iterations=2, trace=True)
    assert any(e["stream"] == "h2d" and e.get("prefetch") for e in r.trace_events)
    assert simulate(policy="overlap", batch=4, iterations=2).trace_events is None


def test_cli_simulate_json(capsys, tmp_path):
    trace = tmp_path / "t.jsonl"
    rc = main(
        [
            "simulate",
            "--policy",
            "specmoe",
            "--batch",
            "8",
            "--gamma",
            "3",
            "--iterations",
            "3",
            "--seed",
            "2",
            "--trace",
            str(trace),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["iterations"] == 3 and out["events"] > 0 and out["trace"] == str(trace)
    assert read_trace(trace).events


def test_cli_simulate_serving_table_and_errors(capsys):
    assert (
        main(
            [
                "simulate",
                "--policy",
                "ondemand",
                "--model",
                "olmoe-1b-7b",
                "--batch",
                "4",
                "--serving",
                "--rate",
                "50",
                "--requests",
                "5",
                "--output-len",
                "4",
                "--prompt-len",
                "32",
            ]
        )
        == 0
    )
    assert "serving" in capsys.readouterr().out
    assert main(["simulate", "--iterations", "0"]) == 2
    assert "iterations" in capsys.readouterr().err
    assert main(["simulate", "--serving", "--rate", "-1"]) == 2
    assert "rate" in capsys.readouterr().err


def test_explicit_arrivals_are_used():
    r = simulate(
        policy="ondemand",
        model="olmoe-1b-7b",
        batch=2,
        arrivals=[0.0, 5.0],
        output_len=2,
        prompt_len=16,
    )
    assert r.requests["first_arrival_s"] == 0.0 and r.requests["last_done_s"] > 5.0
    assert np.isfinite(r.tpot_ms)
