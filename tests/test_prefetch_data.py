"""Measured overlap prefetch hit rate of the tiny MoE (specmoe/data/tiny/prefetch.json) and its CLI
form."""

import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from specmoe.app.cli.main import main
from specmoe.errors import SpecMoEError
from specmoe.inputs.workload import measured_prefetch_hit_rate, parse_prefetch_hit_rate

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "specmoe" / "data" / "tiny" / "prefetch.json"
MODEL_DIR = REPO / "experiments" / "tiny_moe"
# A configuration where the expert compute of a layer outlasts its fetch, so the hit rate shows
# in the prediction (where the link is the bottleneck, a late fetch costs what an early one does).
COMPUTE_BOUND = ["--model", "olmoe-1b-7b", "--hardware", "cpu-local-calibrated", "--batch", "1"]


@pytest.fixture(scope="module")
def doc():
    return json.loads(DATA.read_text())


def test_loads_through_workload(doc):
    h = measured_prefetch_hit_rate("tiny")
    assert 0.0 <= h <= 1.0
    assert (
        h == doc["prefetch_hit_rate"] == doc["by_batch"][str(doc["primary"]["batch"])]["hit_rate"]
    )


def test_batch_picks_largest_measured_batch_not_above(doc):
    measured = sorted(int(b) for b in doc["by_batch"])
    for b in measured:
        assert measured_prefetch_hit_rate("tiny", b) == doc["by_batch"][str(b)]["hit_rate"]
    assert (
        measured_prefetch_hit_rate("tiny", 10**6) == doc["by_batch"][str(measured[-1])]["hit_rate"]
    )


def test_rates_match_their_counts_and_beat_chance(doc):
    for b, d in doc["by_batch"].items():
        assert d["hit_rate"] == pytest.approx(d["useful"] / d["needed"])
        assert d["precision"] == pytest.approx(d["useful"] / d["prefetched"])
        layers = d["per_layer"].values()
        assert sum(x["needed"] for x in layers) == d["needed"]
        assert sum(x["useful"] for x in layers) == d["useful"]
        assert d["hit_rate"] > d["chance_hit_rate"], b  # the router-based prediction is informative
        lo, hi = d["ci95"]["hit_rate"]
        assert lo <= d["hit_rate"] <= hi
        counters = doc["metadata"]["engine_counters"][b]  # decode + prefill, all layers >= 1
        assert counters["prefetch_useful"] >= d["useful"]


def test_data_belongs_to_the_shipped_model(doc):
    path = MODEL_DIR / "model.safetensors"
    if not path.is_file():
        pytest.skip("experiments/tiny_moe/model.safetensors is not present")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == doc["metadata"]["model"]["sha256"], (
        "the model was retrained: rerun experiments/measure_prefetch.py"
    )


def _predict(*flags: str) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["predict", "--policy", "overlap", "--json", *COMPUTE_BOUND, *flags]) == 0
    return json.loads(buf.getvalue())


def test_predict_with_measured_hit_rate_lies_between_none_and_oracle():
    none = _predict("--prefetch-hit-rate", "0")["tokens_per_s"]
    oracle = _predict("--prefetch-hit-rate", "1")["tokens_per_s"]
    assert none < oracle, "no longer compute-bound: pick a configuration where the hit rate matters"
    measured = _predict("--prefetch-hit-rate", "measured:tiny")["tokens_per_s"]
    assert none < measured < oracle
    same = _predict("--prefetch-hit-rate", repr(measured_prefetch_hit_rate("tiny", 1)))[
        "tokens_per_s"
    ]
    assert measured == pytest.approx(same)


@pytest.mark.parametrize("value", ["measured:nope", "1.5", "-0.1", "abc"])
def test_bad_values_name_the_flag(capsys, value):
    assert main(["predict", "--policy", "overlap", "--prefetch-hit-rate", value, "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --prefetch-hit-rate=") and value in err
    with pytest.raises(SpecMoEError, match="prefetch_hit_rate"):
        parse_prefetch_hit_rate(value)


def test_live_measurement_agrees_with_engine_counters(tmp_path):
    """A few greedy steps through the script: its per-layer sets must add up to the engine's
    counters."""
    torch = pytest.importorskip("torch")
    if not (MODEL_DIR / "model.safetensors").is_file():
        pytest.skip("experiments/tiny_moe/model.safetensors is not present")
    import measure_prefetch as mp

    summary = json.loads((MODEL_DIR / "train_summary.json").read_text())
    if not Path(summary["data"]["stdlib_root"]).is_dir():
        pytest.skip("the held-out source files are not on this machine")
    threads = torch.get_num_threads()
    out = tmp_path / "p.json"
    try:
        with redirect_stdout(io.StringIO()):
            doc = mp.main(
                [
                    "--prompts",
                    "2",
                    "--new-tokens",
                    "6",
                    "--batches",
                    "1,2",
                    "--bootstrap",
                    "50",
                    "--out",
                    str(out),
                ]
            )
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    for b in ("1", "2"):
        d = doc["by_batch"][b]
        assert d["decode_steps"] == 2 // int(b) * 5
        assert 0.0 <= d["hit_rate"] <= 1.0 and 0.0 <= d["precision"] <= 1.0
    assert doc["by_batch"]["1"]["mean_needed_per_layer"] == 2.0  # top-2 of one token
