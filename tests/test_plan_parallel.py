"""Planner and CLI for several GPUs."""

import json

from specmoe.app.cli.main import main
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.workload import Workload
from specmoe.planning.parallel import plan_parallel


def test_planner_keeps_experts_in_memory_when_it_can():
    m = load_model("qwen3-235b-a22b")
    out = plan_parallel(m, load_system("hgx-h100x8"), Workload(batch=64))
    assert out["best"]["fits"] and not out["offloaded"]
    assert any(not r["fits"] for r in out["candidates"])  # ep=1 would need offloading
    assert out["best"]["gpu_memory_gb"] <= 80
    assert all(not r["shuffle"] for r in out["candidates"])  # q = 0: nothing to shuffle


def test_planner_offloads_only_when_nothing_fits():
    m = load_model("qwen3-235b-a22b")
    out = plan_parallel(m, load_system("hgx-h100x8", gpu_count=4), Workload(batch=64))
    assert out["offloaded"] and not any(r["fits"] for r in out["candidates"])
    assert out["best"]["feasible"]


def test_planner_shuffles_on_a_slow_network():
    out = plan_parallel(
        load_model("deepseek-v2-lite"),
        load_system("hgx-h100x8-2node-100g"),
        Workload(batch=512),
        accuracy=0.9,
        colocation=0.8,
    )
    assert out["best"]["shuffle"] and out["shuffle_gain"] > 1.0


def test_cli_plan_parallel(capsys):
    assert (
        main(
            [
                "plan-parallel",
                "--hardware",
                "hgx-h100x8",
                "--batch",
                "128",
                "--accuracy",
                "0.5",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"] == 8 and out["best"]["ep"] in (1, 2, 4, 8)
    assert main(["plan-parallel", "--accuracy", "1.5"]) == 2
    assert "accuracy" in capsys.readouterr().err
