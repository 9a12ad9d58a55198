import json
import subprocess
import sys

import pytest

import specmoe
from specmoe.app.cli.main import main
from specmoe.errors import SpecMoEError

PREDICT_KEYS = {
    "tokens_per_s",
    "tpot_ms",
    "iteration_ms",
    "h2d_bytes_per_token",
    "gpu_memory_gb",
    "breakdown",
    "model",
    "hardware",
    "policy",
    "batch",
    "gamma",
    "draft_experts",
}


def _json(capsys, argv):
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_predict_json_has_the_promised_keys(capsys):
    code, out = _json(
        capsys,
        [
            "predict",
            "--policy",
            "specmoe",
            "--gamma",
            "4",
            "--draft-experts",
            "2",
            "--batch",
            "32",
            "--acceptance",
            "0.7",
            "--json",
        ],
    )
    assert code == 0 and PREDICT_KEYS <= set(out)
    assert (
        out["gamma"] == 4
        and out["draft_experts"] == 2
        and out["alpha"] == 0.7
        and out["tokens_per_s"] > 0
    )


def test_plan_json_best_and_candidates(capsys, tmp_path):
    html = tmp_path / "plan.html"
    code, out = _json(
        capsys, ["plan", "--batch", "128", "--max-gamma", "6", "--json", "--html", str(html)]
    )
    assert code == 0 and set(out["best"]) >= {"policy", "gamma", "draft_experts", "tokens_per_s"}
    best = max(c["tokens_per_s"] for c in out["candidates"] if c["fits"])
    assert out["best"]["tokens_per_s"] == best
    gammas = {c["gamma"] for c in out["candidates"] if c["policy"] == "specmoe"}
    assert gammas == set(range(7)) and html.stat().st_size > 1000


def test_api_matches_cli(capsys):
    p = specmoe.predict(model="qwen3-30b-a3b", hardware="l40s", policy="caching", batch=16)
    _, out = _json(
        capsys,
        [
            "predict",
            "--model",
            "qwen3-30b-a3b",
            "--hardware",
            "l40s",
            "--policy",
            "caching",
            "--batch",
            "16",
            "--json",
        ],
    )
    assert p["tokens_per_s"] == pytest.approx(out["tokens_per_s"])


def test_listing_commands(capsys):
    assert main(["hardware", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "h100-pcie" in listing["systems"]
    assert main(["models", "list", "--json"]) == 0
    assert "mixtral-8x7b" in json.loads(capsys.readouterr().out)
    assert main(["models", "show", "mixtral-8x7b"]) == 0
    assert json.loads(capsys.readouterr().out)["num_experts"] == 8


@pytest.mark.parametrize(
    "argv,match",
    [
        (["predict", "--model", "mixtral-8x8b"], "did you mean"),
        (["predict", "--hardware", "h100-pcei"], "did you mean"),
        (["predict", "--batch", "0"], "batch=0"),
        (["predict", "--acceptance", "1.2"], "alpha=1.2"),
        (["predict", "--gamma", "99"], "gamma=99"),
        (["predict", "--draft-experts", "9"], "draft_experts=9"),
        (["predict", "--policy", "ondemand", "--gamma", "3"], "does not speculate"),
        (["plan", "--model", "deepseek-v3", "--hardware", "t4"], "cannot fit"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err


def test_model_import_round_trip(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "model_type": "mixtral",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "vocab_size": 100,
            }
        )
    )
    assert main(["predict", "--model", str(cfg), "--batch", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_s"] > 0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["predict", "--model", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_core_imports_no_torch():
    code = (
        "import specmoe, specmoe.app.api, specmoe.predictors.analytic, specmoe.app.cli.main, "
        "specmoe.predictors.sim, specmoe.planning.search, sys; "
        "specmoe.app.cli.main.build_parser(['plan']); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_specmoe_error_is_value_error():
    assert issubclass(SpecMoEError, ValueError)
