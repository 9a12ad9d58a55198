"""Explanations agree with the numbers: "limited by" is the best doubling, else "balanced"; serving
runs say how loaded they are and flag overload."""

import json

import pytest

from specmoe.app.cli.main import main
from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.setup import resolve
from specmoe.planning.explain import (
    BALANCED_BELOW,
    explain_choice,
    limiting_resource,
    sensitivities,
)
from specmoe.planning.search import search
from specmoe.predictors.capacity import offered_load, replicas_for, requests_per_s
from specmoe.predictors.sim import Simulator, simulate


def _explain(model, system, policy, batch):
    setup = resolve(model=model, hardware=system, batch=batch, policy="ondemand")
    cands = [c for c in search(setup, (policy,), [0]) if c["fits"]]
    return explain_choice(setup, cands[0], cands), setup, cands[0]


def test_limit_is_the_largest_speedup_or_balanced():
    assert limiting_resource({"pcie": 1.9, "hbm": 1.3, "compute": 1.0}) == "pcie"
    assert limiting_resource({"pcie": 1.10, "hbm": 1.14, "compute": 1.0}) == "balanced"
    assert limiting_resource({"pcie": 1.0, "hbm": BALANCED_BELOW}) == "hbm"
    assert limiting_resource({"pcie": 1.3, "hbm": 1.2}, balanced_below=1.5) == "balanced"


def test_slow_pcie_link_is_named_as_the_limit():
    # Mixtral on demand over PCIe 3: every decode step moves ~2.8 GB of experts at 16 GB/s.
    system = load_system("h100-pcie", link="pcie3-x16")
    ex, _, _ = _explain("mixtral-8x7b", system, "ondemand", 16)
    assert ex["limited_by"] == "pcie" and ex["sensitivity"]["pcie"] > 1.5
    assert ex["sensitivity"]["pcie"] == max(ex["sensitivity"].values())
    assert any(line.startswith("limited by PCIe") for line in ex["summary"])


def test_fixed_overheads_make_a_balanced_configuration():
    # 100 ms of fixed time per decoder layer dwarfs every rate: no doubled resource helps.
    base = load_system("h100-pcie")
    system = base.model_copy(update={"efficiency": {**base.efficiency, "layer_overhead_us": 1e5}})
    ex, setup, best = _explain("olmoe-1b-7b", system, "ondemand", 1)
    assert max(ex["sensitivity"].values()) < BALANCED_BELOW
    assert ex["limited_by"] == "balanced" and ex["balanced_below"] == BALANCED_BELOW
    assert any(
        line.startswith("balanced: no single resource gains 1.15×") for line in ex["summary"]
    )
    assert sensitivities(setup, best) == ex["sensitivity"]
    assert ex["pair_sensitivity"]["speedup"] < BALANCED_BELOW  # two doubled together: still little


def test_capacity_formula_by_hand():
    # 100 decode tokens at 100 tokens/s = 1 s, plus a 2 s prefill shared by 4 requests = 0.5 s.
    assert requests_per_s(100.0, 2.0, 4, 101) == pytest.approx(1 / 1.5)
    assert list(replicas_for(10.0, [1 / 1.5, 2.0, 3.0])) == [15, 5, 4]
    assert offered_load(3.0, 2.0) == {
        "rate_rps": 3.0,
        "capacity_rps": 2.0,
        "load": 1.5,
        "overloaded": True,
    }
    assert offered_load(1.0, 2.0)["overloaded"] is False


LRU_ONLY = {"resident_experts": 0, "lru_slots": 16 * 64}  # olmoe: 16 MoE layers x 64 experts
SERVE = {
    "policy": "ondemand",
    "model": "olmoe-1b-7b",
    "batch": 4,
    "serving": True,
    "requests": 24,
    "output_len": 8,
    "prompt_len": 64,
    "seed": 1,
}


@pytest.mark.parametrize("rate,overloaded", [(1000.0, True), (0.5, False)])
def test_serving_flags_overload_from_demand_against_capacity(rate, overloaded):
    r = simulate(rate=rate, **SERVE)
    load = r.to_dict()["load"]
    setup = resolve(**{k: v for k, v in SERVE.items() if k not in ("serving", "requests", "seed")})
    tps, prefill_s = Simulator(
        setup, iterations=40, seed=1
    ).steady_state()  # the capacity's reference
    cap = requests_per_s(tps, prefill_s, 4, 8)
    assert load["capacity_rps"] == pytest.approx(cap)
    assert load["load"] == pytest.approx(rate / cap) and load["overloaded"] is overloaded
    assert load["demand_tokens_per_s"] == pytest.approx(rate * 8)
    assert 0.0 < load["engine_busy"] <= 1.0


def test_capacity_reference_uses_warm_caches():
    # An LRU cache as large as the model (no pinned experts): a cold prefill fetches every expert
    # it needs, a warm one none.
    setup = resolve(
        policy="caching", model="olmoe-1b-7b", batch=4, prompt_len=64, output_len=8, **LRU_ONLY
    )
    sim = Simulator(setup, iterations=10)
    tps, warm_prefill_s = sim.steady_state()
    assert sim.ttft[0] > 5 * warm_prefill_s and tps > 0


def test_light_load_leaves_the_engine_idle_and_heavy_load_keeps_it_busy():
    light, heavy = simulate(rate=0.5, **SERVE).load, simulate(rate=1000.0, **SERVE).load
    assert light["engine_busy"] < 0.5 < heavy["engine_busy"]


def test_cli_serving_reports_load_in_table_and_json(capsys):
    argv = [
        "simulate",
        "--policy",
        "ondemand",
        "--model",
        "olmoe-1b-7b",
        "--batch",
        "4",
        "--serving",
        "--rate",
        "1000",
        "--requests",
        "12",
        "--output-len",
        "8",
        "--prompt-len",
        "64",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "offered load" in out and "overloaded:" in out
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["load"]["overloaded"] is True
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
                "--iterations",
                "5",
                "--json",
            ]
        )
        == 0
    )
    assert "load" not in json.loads(capsys.readouterr().out)  # offline runs have no load


def test_serving_warmup_requests_are_served_but_not_measured():
    r = simulate(rate=50.0, warmup=5, **SERVE)
    assert r.requests["completed"] == 24 and r.requests["measured"] == 19
    cold = simulate(rate=50.0, **{**SERVE, "policy": "caching", **LRU_ONLY})
    warm = simulate(rate=50.0, warmup=4, **{**SERVE, "policy": "caching", **LRU_ONLY})
    # the first batch meets empty expert caches: leaving it out lowers the TTFT tail
    assert warm.ttft_ms_percentiles["p99"] < cold.ttft_ms_percentiles["p99"]
    with pytest.raises(SpecMoEError, match="warmup=24"):
        simulate(rate=50.0, warmup=24, **SERVE)


def test_plan_page_states_the_limit_or_balanced(tmp_path):
    from specmoe.app.plan_page import limit_sentences, write_plan_html
    from specmoe.planning.search import plan

    p = plan(
        model="mixtral-8x7b",
        hardware=load_system("h100-pcie", link="pcie3-x16"),
        batch=16,
        policies=("ondemand",),
        confirm="analytic",
    )
    page = write_plan_html(p, tmp_path / "plan.html", plotlyjs=False).read_text()
    assert "Limited by PCIe bandwidth" in page
    balanced = {
        "explanation": {
            "sensitivity": {"pcie": 1.05, "hbm": 1.10},
            "limited_by": "balanced",
            "balanced_below": 1.15,
            "pair_sensitivity": {"resources": ["hbm", "pcie"], "speedup": 1.9},
        }
    }
    (line,) = limit_sentences(balanced)
    assert line.startswith("Balanced: no single resource would make it 1.15× as fast")
    assert "twice the GPU memory bandwidth and twice the PCIe bandwidth together: 1.90×" in line
