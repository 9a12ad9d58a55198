"""Service-level planning: the fastest configuration under TPOT/TTFT targets, and the GPU count."""

import json
import math

import numpy as np
import pytest

import specmoe
from specmoe.app.api import predict
from specmoe.app.cli.main import main
from specmoe.errors import SpecMoEError
from specmoe.planning import slo
from specmoe.planning.slo import plan_slo

KW = {"model": "olmoe-1b-7b", "hardware": "h100-pcie", "prompt_len": 64, "output_len": 32}


def _serving_tpot(p):
    """TPOT with one full-batch prefill per request lifetime (output_len - 1 decoded tokens)."""
    return p["tpot_ms"] + p["ttft_ms"] / (KW["output_len"] - 1)


def _caching_tpot(batch):
    """Serving TPOT of the fully resident olmoe (caching) at `batch`, 5% over: a target it meets."""
    return 1.05 * _serving_tpot(predict(policy="caching", batch=batch, **KW))


def _brute(policy, batches, gammas=(0,), ns=(0,), tpot_ms=None, ttft_ms=None):
    """Every configuration through `predict`, one at a time: the fastest meeting the targets."""
    rows = []
    for b in batches:
        for g in gammas:
            for n in ns:
                p = predict(policy=policy, batch=b, gamma=g, draft_experts=n, **KW)
                if (
                    p["fits"]
                    and (tpot_ms is None or _serving_tpot(p) <= tpot_ms)
                    and (ttft_ms is None or p["ttft_ms"] <= ttft_ms)
                ):
                    rows.append(p)
    return max(rows, key=lambda p: p["tokens_per_s"])


def test_largest_batch_under_the_tpot_target_when_tpot_grows_with_batch():
    batches = range(1, 65)
    tpot = np.array([_serving_tpot(predict(policy="ondemand", batch=b, **KW)) for b in batches])
    assert np.all(np.diff(tpot) > 0)  # the premise: TPOT grows with batch
    target = float(tpot[40])  # batch 41 sits exactly on the target
    p = plan_slo(
        tpot_ms=target,
        policies=("ondemand",),
        gammas=[0],
        max_batch=64,
        interval="point",
        confirm="analytic",
        **KW,
    )
    largest = int(np.flatnonzero(tpot <= target)[-1]) + 1
    assert p["best"]["batch"] == largest == 41
    assert p["best"]["batch"] == _brute("ondemand", batches, tpot_ms=target)["batch"]
    assert p["best"]["tpot_ms_serving"] == pytest.approx(target) and p["bound"] == "point"
    assert p["replicas"] is None and "confirmation" not in p


def test_speculative_grid_matches_a_brute_force_loop():
    grid = [(b, g, n) for b in range(1, 13) for g in (0, 2, 4) for n in (1, 4)]
    preds = [predict(policy="specmoe", batch=b, gamma=g, draft_experts=n, **KW) for b, g, n in grid]
    # targets that bind: the median serving TPOT and the median TTFT of the grid
    target_tpot = float(np.median([_serving_tpot(p) for p in preds]))
    target_ttft = float(np.median([p["ttft_ms"] for p in preds]))
    p = plan_slo(
        tpot_ms=target_tpot,
        ttft_ms=target_ttft,
        policies=("specmoe",),
        gammas=[0, 2, 4],
        draft_experts=[1, 4],
        max_batch=12,
        interval="point",
        confirm="analytic",
        **KW,
    )
    brute = _brute("specmoe", range(1, 13), (0, 2, 4), (1, 4), target_tpot, target_ttft)
    assert (p["best"]["batch"], p["best"]["gamma"], p["best"]["draft_experts"]) == (
        brute["batch"],
        brute["gamma"],
        brute["draft_experts"],
    )
    assert p["best"]["tokens_per_s"] == pytest.approx(brute["tokens_per_s"])
    assert 0 < p["feasible"] < p["searched"] == len(grid)


def test_replicas_are_the_rate_over_one_replicas_request_rate():
    rate = 50.0
    p = plan_slo(
        tpot_ms=_caching_tpot(8),
        rate=rate,
        policies=("ondemand", "caching"),
        gammas=[0],
        max_batch=64,
        interval="point",
        confirm="analytic",
        **KW,
    )
    b = p["best"]
    # A request: output_len - 1 decode tokens at the batch's tokens/s, plus 1/B of a batch prefill.
    per_replica = 1.0 / (
        (KW["output_len"] - 1) / b["tokens_per_s"] + b["ttft_ms"] / 1e3 / b["batch"]
    )
    assert b["requests_per_s"] == pytest.approx(per_replica)
    assert p["replicas"] == math.ceil(rate / per_replica) and p["objective"] == "requests_per_s"
    for c in p["best_by_policy"].values():  # the choice has the most requests/s per GPU
        assert c["requests_per_s"] <= b["requests_per_s"]


def test_targets_use_the_p90_when_intervals_exist(monkeypatch):
    def fake_intervals(model, system, workload, policy, batch, gamma, draft_experts):
        # p90 = 2 × the point value: the choice must leave that margin
        from specmoe.predictors.analytic import Analytic

        r = Analytic(model, system, workload).evaluate(
            policy, batch=batch, gamma=gamma, draft_experts=draft_experts
        )
        return {
            k: np.stack([getattr(r, k)] * 2 + [2 * getattr(r, k)]) for k in ("tpot_ms", "ttft_ms")
        }

    monkeypatch.setattr(slo, "_intervals", lambda: fake_intervals)
    tpot = np.array(
        [_serving_tpot(predict(policy="ondemand", batch=b, **KW)) for b in range(1, 65)]
    )
    target = float(tpot[40])
    p = plan_slo(
        tpot_ms=target, policies=("ondemand",), gammas=[0], max_batch=64, confirm="analytic", **KW
    )
    assert p["bound"] == "p90"
    assert p["best"]["batch"] == int(np.flatnonzero(2 * tpot <= target)[-1]) + 1 < 41
    assert p["best"]["tpot_ms_bound"] == pytest.approx(2 * p["best"]["tpot_ms_serving"])


def test_serving_simulator_confirms_the_choice():
    tpot = _caching_tpot(8)  # a target that batch 8 meets analytically
    p = specmoe.plan(
        tpot_ms=tpot,
        ttft_ms=200.0,
        rate=200.0,
        policies=("caching",),
        gammas=[0],
        max_batch=16,
        interval="point",
        **KW,
    )
    c, rounds = p["confirmation"], p["rounds"]
    assert c["ran"] and c["mode"] == "serving" and c["tries"][0]["replicas"] == p["replicas"] > 1
    for t in c["tries"]:  # each try at the rate split over its replicas
        assert t["rate_per_replica_rps"] == pytest.approx(200.0 / t["replicas"])
        assert t["meets"] == (t["tpot_ms_p90"] <= tpot and t["ttft_ms_p90"] <= 200.0)
    assert [t["replicas"] for t in c["tries"]] == sorted({t["replicas"] for t in c["tries"]})
    assert all(not r["meets"] for r in rounds[:-1]) and rounds[-1]["batch"] == p["best"]["batch"]
    if c["meets"]:
        assert c["replicas"] == c["tries"][-1]["replicas"] >= p["replicas"]


def _missed(tpot_p90, ttft_p90, tpot_bound=4.9, ttft_bound=7.0):
    return {
        "targets": {"tpot_ms": 5.0, "ttft_ms": 200.0, "rate_rps": 10.0},
        "best": {"tpot_ms_bound": tpot_bound, "ttft_ms_bound": ttft_bound},
        "confirmation": {
            "ran": True,
            "mode": "serving",
            "meets": False,
            "tries": [
                {"tpot_ms_p90": 9.0, "ttft_ms_p90": 900.0},
                {"tpot_ms_p90": tpot_p90, "ttft_ms_p90": ttft_p90},
            ],
        },
    }


def test_a_missed_target_is_lowered_by_the_simulators_gap():
    used = {"tpot_ms": 5.0, "ttft_ms": 200.0, "rate_rps": 10.0}
    # the last (least loaded) try missed TPOT by 0.6 ms beyond the analytic 4.9:
    # the target drops by 0.7
    assert slo._tightened(_missed(5.6, 150.0), used) == {**used, "tpot_ms": pytest.approx(4.3)}
    # a gap smaller than 2% still lowers the target by 2%, so the next search differs
    assert slo._tightened(_missed(5.05, 150.0, tpot_bound=5.0), used)["tpot_ms"] == pytest.approx(
        4.9
    )
    # TTFT missed by 60 ms beyond its analytic 150 ms: 140 ms next; a gap beyond the target: give up
    assert slo._tightened(_missed(4.0, 210.0, ttft_bound=150.0), used) == {
        **used,
        "ttft_ms": pytest.approx(140.0),
    }
    assert slo._tightened(_missed(4.0, 260.0), used) is None
    met = _missed(4.0, 100.0)
    met["confirmation"]["meets"] = True
    assert slo._tightened(met, used) is None


def test_tightening_round_after_a_simulated_miss(monkeypatch):
    # A confirmation that misses TPOT once, by a known gap, makes a second search at a lower target.
    calls = []

    def fake_confirm(base, best, targets, replicas, seed=0, required=False):
        calls.append(best["batch"])
        ok = len(calls) > 1
        tpot = best["tpot_ms_bound"] + (0.0 if ok else 1.0)
        return {
            "ran": True,
            "mode": "serving",
            "requests": 1,
            "warmup": 0,
            "meets": ok,
            "replicas": replicas,
            "tries": [
                {
                    "replicas": replicas,
                    "rate_per_replica_rps": 1.0,
                    "tpot_ms_p90": tpot,
                    "ttft_ms_p90": 1.0,
                    "load": 0.5,
                    "meets": ok,
                }
            ],
            "compared": "fake",
        }

    monkeypatch.setattr(slo, "confirm_choice", fake_confirm)
    tpot = np.array(
        [_serving_tpot(predict(policy="ondemand", batch=b, **KW)) for b in range(1, 65)]
    )
    target = float(tpot[40]) + 0.5  # batch 41 fits, batch 41's sim TPOT does not
    p = plan_slo(
        tpot_ms=target,
        rate=1.0,
        policies=("ondemand",),
        gammas=[0],
        max_batch=64,
        interval="point",
        **KW,
    )
    first, second = p["rounds"]
    assert second["targets_used"]["tpot_ms"] == pytest.approx(
        min(target - 1.0, 0.98 * target)
    )  # gap 1 ms
    assert second["batch"] == int(np.flatnonzero(tpot <= second["targets_used"]["tpot_ms"])[-1]) + 1
    assert (
        second["batch"] < first["batch"]
        and second["meets"]
        and p["best"]["batch"] == second["batch"]
    )


def test_bad_targets_and_impossible_targets_raise():
    with pytest.raises(SpecMoEError, match="tpot_ms, ttft_ms"):
        plan_slo(**KW)
    with pytest.raises(SpecMoEError, match="rate=-1"):
        plan_slo(tpot_ms=10, rate=-1, **KW)
    with pytest.raises(SpecMoEError, match="confirm='maybe'"):
        plan_slo(tpot_ms=10, confirm="maybe", **KW)
    with pytest.raises(SpecMoEError, match="no configuration"):
        plan_slo(tpot_ms=1e-6, confirm="analytic", max_batch=4, **KW)


def test_cli_plan_with_targets(capsys):
    tpot = round(_caching_tpot(8), 3)
    argv = [
        "plan",
        "--model",
        "olmoe-1b-7b",
        "--prompt-len",
        "64",
        "--output-len",
        "32",
        "--tpot-ms",
        str(tpot),
        "--rate",
        "40",
        "--max-batch",
        "16",
        "--policies",
        "ondemand,caching",
        "--confirm",
        "analytic",
    ]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replicas"] >= 1 and out["best"]["batch"] <= 16 and out["targets"]["tpot_ms"] == tpot
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Service-level plan" in text and "GPUs for 40 requests/s" in text
    assert main(["plan", "--tpot-ms", "5", "--html", "x.html"]) == 2
