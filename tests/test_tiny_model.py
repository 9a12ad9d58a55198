"""The shipped tiny MoE (experiments/tiny_moe/) and its routing statistics (specmoe/data/tiny/)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "experiments" / "tiny_moe"
ROUTING = REPO / "specmoe" / "data" / "tiny" / "routing.json"

# Code the model never saw in training (not from the standard library).
SNIPPET = '''def moving_average(values, window):
    """Return the moving averages of values over the given window."""
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result
'''


def _load_module():
    """experiments/ is not a package: load the training script (the model's one home) by path."""
    name = "train_tiny_moe"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / "train_tiny_moe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tm():
    return _load_module()


@pytest.fixture(scope="module")
def config():
    return json.loads((MODEL_DIR / "config.json").read_text())


@pytest.fixture(scope="module")
def loaded(tm):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return tm.load_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def tokenizer(tm):
    pytest.importorskip("tokenizers")
    return tm.load_tokenizer(MODEL_DIR)


def expected_shapes(c: dict) -> dict:
    """HF MixtralForCausalLM tensor names and (out_features, in_features) shapes, from config
    alone."""
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "block_sparse_moe.gate.weight": (c["num_local_experts"], h),
            }
        )
        for e in range(c["num_local_experts"]):
            x = f"{p}block_sparse_moe.experts.{e}."
            shapes.update(
                {
                    x + "w1.weight": (inter, h),
                    x + "w2.weight": (h, inter),
                    x + "w3.weight": (inter, h),
                }
            )
    return shapes


def test_config_is_hf_mixtral(config):
    assert config["model_type"] == "mixtral"
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert config["torch_dtype"] == "bfloat16"
    assert config["num_experts_per_tok"] <= config["num_local_experts"]
    assert config["num_attention_heads"] % config["num_key_value_heads"] == 0
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_safetensors_names_shapes_dtype(config):
    sd = safetensors_torch.load_file(str(MODEL_DIR / "model.safetensors"))
    want = expected_shapes(config)
    assert set(sd) == set(want)
    for name, shape in want.items():
        assert tuple(sd[name].shape) == shape, name
        assert sd[name].dtype == torch.bfloat16, name
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 20 * 2**20


def test_tokenizer_round_trip_and_specials(tokenizer, config):
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    assert [tokenizer.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    ids = tokenizer.encode(SNIPPET, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == SNIPPET
    assert len(SNIPPET.encode()) / len(ids) > 2.0  # BPE merges, not bytes


def snippet_loss(model, ids) -> float:
    x = torch.tensor([[1, *ids]])
    with torch.no_grad():
        logits = model(x)
    return float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:]))


def test_model_beats_unigram_on_unseen_code(loaded, tokenizer):
    model, _ = loaded
    summary = json.loads((MODEL_DIR / "train_summary.json").read_text())
    loss = snippet_loss(model, tokenizer.encode(SNIPPET, add_special_tokens=False).ids)
    assert loss < summary["unigram_ce"] - 2.0
    assert loss < summary["bigram_ce"]


def test_greedy_generation_is_deterministic_and_plausible(tm, loaded, tokenizer):
    model, _ = loaded
    prompt = tokenizer.encode("import os\nimport sys\n\n\ndef main(", add_special_tokens=False).ids
    a = tm.greedy_generate(model, [1, *prompt], 24)
    b = tm.greedy_generate(model, [1, *prompt], 24)
    assert a == b
    assert len(set(a)) >= 4  # not one token repeated
    text = tokenizer.decode(a)
    assert ")" in text and ":" in text  # the call/def closes as Python would


def test_routing_matches_model_on_snippet(loaded, tokenizer):
    """Every token routes to top_k distinct experts with renormalised weights (Mixtral gate)."""
    model, cfg = loaded
    ids = torch.tensor([tokenizer.encode(SNIPPET, add_special_tokens=False).ids])
    with torch.no_grad():
        _, routing = model(ids, with_routing=True)
    assert len(routing) == cfg.num_hidden_layers
    for logits, top_i in routing:
        assert top_i.shape == (ids.numel(), cfg.num_experts_per_tok)
        assert all(len(set(row.tolist())) == cfg.num_experts_per_tok for row in top_i)
        assert torch.equal(top_i, torch.topk(logits.softmax(-1), cfg.num_experts_per_tok).indices)


@pytest.fixture(scope="module")
def routing():
    return json.loads(ROUTING.read_text())


def test_routing_json_invariants(routing, config):
    k, e = config["num_experts_per_tok"], config["num_local_experts"]
    p = np.asarray(routing["inclusion_probs"])
    assert p.shape == (config["num_hidden_layers"], e)
    assert np.allclose(p.sum(1), k, atol=1e-9)
    assert ((p >= 0) & (p <= 1)).all()
    reuse = routing["step_reuse"]
    assert all(0.0 <= r <= 1.0 for r in reuse["per_layer"])
    assert np.allclose(reuse["chance_per_layer"], (p**2).sum(1) / k)
    assert 0.0 <= routing["temporal_reuse_excess"] <= 1.0


def test_routing_distinct_experts_match_formula(routing, config):
    k, e = config["num_experts_per_tok"], config["num_local_experts"]
    d = routing["distinct_experts"]
    n = np.asarray(d["n"], dtype=float)
    p = np.asarray(routing["inclusion_probs"])
    formula = (1 - (1 - p[:, :, None]) ** n).sum(1)
    assert np.allclose(d["formula"], formula)
    meas, std = np.asarray(d["independent_measured"]), np.asarray(d["independent_std"])
    sem = std / np.sqrt(d["samples_per_n"])
    assert (np.abs(meas - formula) <= 5 * sem + 0.02).all()
    assert np.allclose(meas[:, n == 1], k)
    assert (np.diff(meas, axis=1) >= -1e-9).all() and (np.diff(formula, axis=1) >= 0).all()
    assert (meas <= np.minimum(e, n * k) + 1e-9).all()
    cons = np.asarray(d["consecutive_measured"])
    assert (cons <= meas + 0.25).all()  # neighbours share experts: never more spread than random


def test_logits_match_transformers_mixtral(tm):
    """Same logits as HF MixtralForCausalLM on the shipped weights (skipped without
    transformers)."""
    pytest.importorskip("transformers")
    assert tm.hf_parity(MODEL_DIR, seq_len=64) < 1e-4
