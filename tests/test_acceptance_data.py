"""Measured acceptance of the tiny MoE (specmoe/data/tiny/acceptance.json) and a live check of
it."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from specmoe.app.cli.main import main
from specmoe.inputs.workload import measured_acceptance

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "specmoe" / "data" / "tiny" / "acceptance.json"
MODEL_DIR = REPO / "experiments" / "tiny_moe"
DRAFT_SETS = ("random", "hot", "hottemporal")


@pytest.fixture(scope="module")
def doc():
    return json.loads(DATA.read_text())


@pytest.mark.parametrize("draft_set", DRAFT_SETS)
def test_loads_through_workload(doc, draft_set):
    acc = measured_acceptance("tiny", draft_set)
    assert acc.source == f"measured:tiny:{draft_set}"
    ns = [n for n, _ in acc.alpha_by_draft_experts]
    assert ns == sorted(int(n) for n in doc["alpha_by_draft_experts"][draft_set]) and len(ns) >= 3
    for n, a in acc.alpha_by_draft_experts:
        assert 0.0 <= a < 1.0, (draft_set, n, a)
    assert acc.alpha_for(ns[0]) == pytest.approx(acc.alpha_by_draft_experts[0][1])


def test_tau_tables_are_proper(doc):
    """Every table: τ(γ) in [1, γ+1], non-decreasing in γ; all experts resident accept
    everything."""
    e = doc["metadata"]["model"]["experts"]
    for tkey, bt in doc["by_temperature"].items():
        for ds, per_n in bt["tau_by_gamma"].items():
            for n, table in per_n.items():
                g = np.array([int(k) for k in table])
                t = np.array(list(table.values()))
                assert (np.diff(g) == 1).all() and g[0] == 1, (tkey, ds, n)
                assert (t >= 1.0).all() and (t <= g + 1 + 1e-9).all(), (tkey, ds, n, t)
                assert (np.diff(t) >= -1e-12).all(), (tkey, ds, n, t)
                if int(n) == e:
                    np.testing.assert_allclose(t, g + 1.0)
    assert (
        doc["tau_by_gamma"]
        == doc["by_temperature"][f"{doc['primary_temperature']:g}"]["tau_by_gamma"]
    )


def test_alpha_fit_matches_its_table(doc):
    """The shipped α reproduces its τ table within the recorded fit error (i.i.d. model)."""
    for bt in doc["by_temperature"].values():
        for ds, per_n in bt["details"].items():
            for n, entry in per_n.items():
                a, fit = entry["alpha"], entry["alpha_fit"]
                assert a == bt["alpha_by_draft_experts"][ds][n]
                table = np.array(list(bt["tau_by_gamma"][ds][n].values()))
                g = np.arange(1, len(table) + 1, dtype=float)
                model = g + 1.0 if fit["capped"] else (1 - a ** (g + 1)) / (1 - a)
                assert np.abs(model / table - 1).max() == pytest.approx(
                    fit["max_rel_err"], abs=1e-6
                )


@pytest.mark.parametrize("draft_set", DRAFT_SETS)
def test_predict_with_measured_acceptance(capsys, draft_set):
    code = main(
        [
            "predict",
            "--policy",
            "specmoe",
            "--gamma",
            "4",
            "--draft-experts",
            "2",
            "--draft-set",
            draft_set,
            "--batch",
            "64",
            "--acceptance",
            "measured:tiny",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["tokens_per_s"] > 0
    assert out["acceptance_source"] == f"measured:tiny:{draft_set}"


def test_data_belongs_to_the_shipped_model(doc):
    path = MODEL_DIR / "model.safetensors"
    if not path.is_file():
        pytest.skip("experiments/tiny_moe/model.safetensors is not present")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == doc["metadata"]["model"]["sha256"], (
        "the model was retrained: rerun experiments/measure_acceptance.py"
    )


def test_live_all_experts_resident_accepts_every_draft():
    """specmoe with N = E drafts with the full model, so greedy verification accepts all γ
    drafts."""
    torch = pytest.importorskip("torch")
    if not (MODEL_DIR / "model.safetensors").is_file():
        pytest.skip("experiments/tiny_moe/model.safetensors is not present")
    from specmoe.engine.generate import Engine
    from specmoe.engine.weights import load_weights

    from specmoe.inputs.policies import make_policy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w = load_weights(MODEL_DIR, dtype="float32")
        gamma, e = 4, w.cfg.experts
        pol = make_policy("specmoe", gamma=gamma, draft_experts=e, draft_set="hottemporal")
        eng = Engine(w, pol, device="cpu", max_batch=1, max_seq_len=64)
        prompt = [1, *range(300, 316)]  # <s> and 16 ordinary ids
        res = eng.generate([prompt], max_new_tokens=16, temperature=0.0)
    finally:
        torch.set_num_threads(threads)
    st = res.stats
    assert st.sequence_rounds >= 3
    assert st.accept_counts == [st.sequence_rounds] * gamma
    assert st.tokens_per_verify == gamma + 1
