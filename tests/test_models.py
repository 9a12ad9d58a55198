import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specmoe.errors import SpecMoEError
from specmoe.inputs.models import (
    ModelSpec,
    from_hf_config,
    list_models,
    load_model,
    save_to_catalog,
    to_hf_config,
)

CATALOG = [
    "mixtral-8x7b",
    "mixtral-8x22b",
    "qwen1.5-moe-a2.7b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "olmoe-1b-7b",
    "deepseek-v2-lite",
    "deepseek-v3",
    "phi-3.5-moe",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "llama-4-scout",
    "nllb-moe-54b",
]

# Published (total, active) parameters, in billions, from the model cards / papers. GPT-OSS (OpenAI
# model card) counts active parameters without the input embedding table; the others include it.
# Llama-4-Scout's 109B includes its vision encoder, which the text spec leaves out.
PUBLISHED = {
    "mixtral-8x7b": (46.7, 12.9),
    "mixtral-8x22b": (141, 39),
    "qwen1.5-moe-a2.7b": (14.3, 2.7),
    "qwen3-30b-a3b": (30.5, 3.3),
    "qwen3-235b-a22b": (235, 22),
    "olmoe-1b-7b": (6.9, 1.3),
    "deepseek-v2-lite": (15.7, None),
    "deepseek-v3": (671, 37),
    "phi-3.5-moe": (41.9, 6.6),
    "gpt-oss-20b": (20.9, 3.61),
    "gpt-oss-120b": (116.8, 5.13),
    "llama-4-scout": (109, 17),
    "nllb-moe-54b": (54.5, None),
}


@pytest.fixture(autouse=True)
def _private_user_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECMOE_MODELS_DIR", str(tmp_path / "user-models"))


def _tiny(**over):
    cfg = {
        "model_type": "mixtral",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "intermediate_size": 96,
        "vocab_size": 100,
    }
    cfg.update(over)
    return cfg


def test_catalog_is_complete_and_every_entry_parses_and_round_trips():
    assert set(CATALOG) <= set(list_models())
    for name in CATALOG:
        spec = load_model(name)
        assert spec.name == name and spec.source
        json.dumps(spec.to_dict())  # JSON-able, derived figures included
        assert from_hf_config(to_hf_config(spec)) == spec


@pytest.mark.parametrize("name", CATALOG)
def test_parameter_counts_match_published_figures(name):
    spec = load_model(name)
    total, active = PUBLISHED[name]
    assert spec.total_params / 1e9 == pytest.approx(total, rel=0.015)
    if active is not None:
        got = spec.active_params_per_token
        if spec.family == "gpt_oss":
            got -= spec.embedding_params
        assert got / 1e9 == pytest.approx(active, rel=0.025)


def test_mixtral_8x7b_by_hand():
    m = load_model("mixtral-8x7b")
    assert m.expert_params == 3 * 4096 * 14336 == 176_160_768
    assert m.expert_bytes == 352_321_536
    assert m.experts_total_bytes == 8 * 32 * 352_321_536  # ≈ 90.2 GB
    assert m.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2 == 131_072
    attn = 2 * 4096 * 4096 + 2 * 4096 * 1024
    embed = 32000 * 4096
    exact = 32 * (attn + 2 * 4096 + 4096 * 8 + 8 * 176_160_768) + 4096 + 2 * embed
    assert m.total_params == exact == 46_702_792_704
    assert m.active_params_per_token == exact - 32 * 6 * 176_160_768
    assert m.resident_bytes == 2 * (exact - 32 * 8 * 176_160_768)
    assert m.attn_proj_flops_per_token == 2 * attn
    assert m.attn_score_flops_per_token(1000) == 4 * 32 * 128 * 1000
    assert (
        m.router_flops_per_token == 2 * 4096 * 8 and m.lm_head_flops_per_token == 2 * 4096 * 32000
    )


def test_deepseek_mla_and_shared_experts():
    v3 = load_model("deepseek-v3")
    assert v3.attention == "mla" and v3.moe_layer_ids == tuple(range(3, 61))
    assert v3.kv_bytes_per_token == 61 * (512 + 64) * 2
    assert v3.num_shared_experts == 1 and v3.shared_expert_flops_per_token == 2 * 3 * 7168 * 2048
    assert v3.dense_ffn_flops_per_token == 2 * 3 * 7168 * 18432
    # the shipped checkpoint is block-FP8: 1 byte + one float32 scale per 128x128 block
    assert v3.expert_dtype_bytes == pytest.approx(1 + 4 / 128**2)
    assert 1 < v3.dtype_bytes < 2  # fp8 projections, bf16 embeddings
    lite = load_model("deepseek-v2-lite")
    assert lite.q_lora_rank == 0 and lite.num_shared_experts == 2 and lite.moe_layer_ids[0] == 1
    scores = lite.attn_score_flops_per_token(np.array([0.0, 10.0]))
    assert scores.tolist() == [0.0, 10 * 2 * 16 * (2 * 512 + 64)]


def test_nllb_is_encoder_decoder_with_plain_ffn():
    m = load_model("nllb-moe-54b")
    assert not m.gated_ffn and m.top_k == 2 and m.encoder_layers == 24
    assert m.moe_layer_ids == m.encoder_moe_layer_ids == (3, 7, 11, 15, 19, 23)
    assert m.expert_params == 2 * 2048 * 8192 + 8192 + 2048  # fc1, fc2 with biases
    assert m.total_bytes == pytest.approx(2 * m.total_params)
    assert m.cross_attn_score_flops_per_token(100) == 4 * 16 * 128 * 100
    assert m.cross_kv_bytes(10) == 24 * 2 * 16 * 128 * 2 * 10
    assert m.encoder_flops_per_token > 0 and load_model("olmoe-1b-7b").encoder_flops_per_token == 0


def test_family_specifics():
    oss = load_model("gpt-oss-120b")
    assert oss.expert_dtype_bytes == 0.53125 and oss.dtype_bytes == 2.0
    assert oss.expert_bytes == pytest.approx(oss.expert_params * 4.25 / 8)
    assert len(oss.sliding_layer_ids) == 18 and oss.sliding_window == 128
    # half the layers attend to at most 128 positions
    assert oss.attn_score_flops_per_token(10_128) == 4 * 64 * 64 * (10_128 + 128) / 2
    scout = load_model("llama-4-scout")
    assert scout.num_moe_layers == 48 and scout.num_shared_experts == 1
    assert scout.kv_cache_bytes(100_000) < scout.kv_bytes_per_token * 100_000
    qwen = load_model("qwen1.5-moe-a2.7b")
    assert qwen.shared_expert_intermediate_size == 5632 and qwen.attention_bias
    assert load_model("qwen3-30b-a3b").head_dim == 128


def test_forward_flops_agree_with_active_parameters():
    for name in ("mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "llama-4-scout"):
        m = load_model(name)
        matmul_params = m.active_params_per_token - m.embedding_params
        assert m.forward_flops_per_token(0) == pytest.approx(2 * matmul_params, rel=1e-3)


def test_minimal_hand_written_config():
    m = from_hf_config(_tiny(), name="Tiny_MoE")
    assert m.name == "tiny-moe" and m.head_dim == 16 and m.num_kv_heads == 2
    attn = 2 * 64 * 64 + 2 * 64 * 32
    expert = 3 * 64 * 96
    assert m.expert_params == expert
    assert m.total_params == 2 * (attn + 2 * 64 + 64 * 4 + 4 * expert) + 64 + 2 * 100 * 64
    assert m.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2
    tied = from_hf_config(_tiny(tie_word_embeddings=True))
    assert m.total_params - tied.total_params == 100 * 64


def test_qwen_sparse_step_and_mlp_only_layers():
    cfg = {
        "model_type": "qwen2_moe",
        "hidden_size": 32,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "intermediate_size": 64,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
        "vocab_size": 50,
    }
    m = from_hf_config(cfg)
    assert (
        m.moe_layer_ids == (1, 5) and m.dense_intermediate_size == 64 and m.num_shared_experts == 0
    )
    assert from_hf_config(to_hf_config(m)) == m


def test_load_by_alias_path_and_directory(tmp_path):
    assert load_model("MIXTRAL_8x7B").name == "mixtral-8x7b"
    assert load_model("mistralai/Mixtral-8x7B-v0.1").name == "mixtral-8x7b"
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_tiny()))
    assert load_model(str(d)).num_experts == 4
    assert load_model(d / "config.json").top_k == 2


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({k: v for k, v in _tiny().items() if k != "hidden_size"}, "hidden_size"),
        (_tiny(intermediate_size=0), "intermediate_size"),
        (_tiny(num_hidden_layers=-2), "num_hidden_layers"),
        (_tiny(num_experts_per_tok=5), "num_experts_per_tok"),
        (_tiny(num_key_value_heads=3), "num_key_value_heads"),
        (_tiny(model_type="llama"), "model_type"),
        (_tiny(vocab_size="big"), "vocab_size"),
    ],
)
def test_bad_configs_name_the_field(cfg, field):
    with pytest.raises(SpecMoEError, match=field) as e:
        from_hf_config(cfg)
    assert "\n" not in str(e.value)


def test_bad_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(SpecMoEError, match="mixtral"):  # lists the supported model types
        from_hf_config(_tiny(model_type="llama"))
    with pytest.raises(SpecMoEError, match="did you mean: mixtral-8x7b"):
        load_model("mixtral-8x8b")
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(SpecMoEError, match="broken.json"):
        load_model(str(bad))
    with pytest.raises(SpecMoEError, match="does not exist"):
        load_model(str(tmp_path / "missing.json"))
    spec = load_model("olmoe-1b-7b")
    with pytest.raises(SpecMoEError, match="top_k"):
        dataclasses.replace(spec, top_k=65)
    with pytest.raises(SpecMoEError, match="expert_intermediate_size"):
        dataclasses.replace(spec, expert_intermediate_size=0)
    with pytest.raises(SpecMoEError, match="moe_layer_ids"):
        dataclasses.replace(spec, moe_layer_ids=("a",))
    listy = tmp_path / "list.json"
    listy.write_text("[1, 2]")
    with pytest.raises(SpecMoEError, match="list.json"):
        from_hf_config(listy)


def test_save_to_catalog(tmp_path):
    src = tmp_path / "config.json"
    src.write_text(json.dumps(_tiny()))
    path = save_to_catalog(src, "My_Tiny")
    assert path.name == "my-tiny.json" and "my-tiny" in list_models()
    assert json.loads(path.read_text())["_specmoe"]["name"] == "my-tiny"
    assert load_model("my-tiny").expert_params == 3 * 64 * 96
    # a spec with fp8 KV goes through the HF form and comes back equal
    spec = dataclasses.replace(load_model("qwen3-30b-a3b"), kv_dtype_bytes=1.0)
    out = save_to_catalog(spec, "qwen3-fp8kv", directory=tmp_path / "cat")
    assert from_hf_config(out) == dataclasses.replace(spec, name="qwen3-fp8kv")
    # without a name, the config's own (from its source) is used
    assert save_to_catalog(_tiny(_name_or_path="org/Tiny-MoE")).name == "tiny-moe.json"
    with pytest.raises(SpecMoEError, match="num_experts_per_tok"):
        save_to_catalog(_tiny(num_experts_per_tok=9), "broken")
    assert not (tmp_path / "user-models" / "broken.json").exists()
    assert not list((tmp_path / "user-models").glob(".*tmp"))


@settings(max_examples=25, deadline=None)
@given(
    layers=st.integers(1, 8),
    experts=st.integers(1, 16),
    inter=st.integers(1, 512),
    hidden=st.sampled_from([32, 64, 96]),
    scale=st.floats(0.25, 4.0),
    shared=st.integers(0, 2),
)
def test_bytes_scale_linearly_with_dtype(layers, experts, inter, hidden, scale, shared):
    base = ModelSpec(
        name="p",
        family="qwen2_moe",
        num_layers=layers,
        moe_layer_ids=tuple(range(layers)),
        hidden_size=hidden,
        num_heads=4,
        num_kv_heads=2,
        head_dim=hidden // 4,
        attention="gqa",
        q_lora_rank=0,
        kv_lora_rank=0,
        qk_nope_head_dim=0,
        qk_rope_head_dim=0,
        v_head_dim=0,
        num_experts=experts,
        top_k=1,
        expert_intermediate_size=inter,
        num_shared_experts=shared,
        shared_expert_intermediate_size=inter * shared,
        dense_intermediate_size=0,
        gated_ffn=True,
        vocab_size=100,
        tie_embeddings=False,
    )
    scaled = dataclasses.replace(base, expert_dtype_bytes=2.0 * scale)
    assert scaled.expert_bytes == pytest.approx(scale * base.expert_bytes)
    assert scaled.experts_total_bytes == pytest.approx(scale * base.experts_total_bytes)
    assert scaled.resident_bytes == base.resident_bytes
    for s in (base, scaled):
        assert s.experts_total_bytes == pytest.approx(
            s.num_moe_layers * s.num_experts * s.expert_bytes
        )
    wide = dataclasses.replace(base, dtype_bytes=2.0 * scale, kv_dtype_bytes=2.0 * scale)
    assert wide.resident_bytes == pytest.approx(scale * base.resident_bytes)
    assert wide.kv_bytes_per_token == pytest.approx(scale * base.kv_bytes_per_token)
    assert base.total_bytes == pytest.approx(2.0 * base.total_params)
