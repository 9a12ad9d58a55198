"""Engine model: configs, weight loading and its errors, KV cache positions, rollback, padding."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from specmoe.engine.config import MoEConfig
from specmoe.engine.model import KVCache, Transformer
from specmoe.engine.moe import ResidentExperts
from specmoe.engine.weights import load_weights, random_model, save_weights, to_hf_config

from specmoe.errors import SpecMoEError

CFG = MoEConfig(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=6, top_k=2,
                expert_ffn=24, vocab=50, max_seq_len=32, max_batch=4, dtype="float64")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only contend on a shared 2-core machine
    yield
    torch.set_num_threads(n)


def _model(w):
    return Transformer(w.cfg, w.dense, ResidentExperts(w.cfg, w.experts, "cpu"))


# ----------------------------------------------------------------------------- configs


def test_from_hf_mixtral_and_qwen():
    mix = MoEConfig.from_hf(
        {
            "model_type": "mixtral",
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "vocab_size": 100,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 96,
            "rope_theta": 1e6,
            "torch_dtype": "bfloat16",
        }
    )
    assert (mix.experts, mix.top_k, mix.expert_ffn, mix.head_dim, mix.layout) == (
        8,
        2,
        96,
        8,
        "mixtral",
    )
    assert mix.norm_topk_prob and mix.dtype == "bfloat16" and mix.rope_theta == 1e6
    q2 = MoEConfig.from_hf(
        {
            "model_type": "qwen2_moe",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vocab_size": 100,
            "num_experts": 60,
            "num_experts_per_tok": 4,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 128,
        }
    )
    assert (q2.experts, q2.shared_expert_ffn, q2.qkv_bias, q2.norm_topk_prob, q2.kv_heads) == (
        60,
        128,
        True,
        False,
        4,
    )
    q3 = MoEConfig.from_hf(
        {
            "model_type": "qwen3_moe",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "vocab_size": 100,
            "num_experts": 16,
            "num_experts_per_tok": 4,
            "moe_intermediate_size": 32,
            "norm_topk_prob": True,
        }
    )
    assert q3.qk_norm and q3.head_dim == 32 and q3.layout == "qwen_moe"


def test_from_hf_rejects_unknown_and_incomplete():
    with pytest.raises(SpecMoEError, match="model_type='llama'"):
        MoEConfig.from_hf({"model_type": "llama"})
    with pytest.raises(SpecMoEError, match="num_local_experts"):
        MoEConfig.from_hf({"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "vocab_size": 10, "num_experts_per_tok": 2,
                               "intermediate_size": 8})


def test_from_spec_real_shapes():
    models = pytest.importorskip("specmoe.inputs.models")
    cfg = MoEConfig.from_spec(models.load_model("mixtral-8x7b"), layers=2)
    assert (cfg.hidden, cfg.experts, cfg.expert_ffn, cfg.layers) == (4096, 8, 14336, 2)
    assert cfg.expert_bytes == 3 * 4096 * 14336 * 2


def test_config_rejects_bad_fields():
    with pytest.raises(SpecMoEError, match="top_k=9"):
        CFG.with_(top_k=9)
    with pytest.raises(SpecMoEError, match="heads=4 is not a multiple of kv_heads=3"):
        CFG.with_(kv_heads=3)


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "cfg",
    [CFG, CFG.with_(layout="qwen_moe", shared_expert_ffn=16, qkv_bias=True, norm_topk_prob=False)],
    ids=["mixtral", "qwen2"],
)
def test_save_load_roundtrip(tmp_path, cfg):
    w = random_model(cfg, seed=3)
    save_weights(w, tmp_path)
    back = load_weights(
        tmp_path, dtype="float64", max_seq_len=cfg.max_seq_len, max_batch=cfg.max_batch
    )
    assert back.cfg == cfg
    assert set(back.dense) == set(w.dense)
    for k in w.dense:
        assert torch.equal(back.dense[k], w.dense[k]), k
    for a, b in zip(back.experts, w.experts):
        assert torch.equal(a, b)


def test_load_sharded_index(tmp_path):
    w = random_model(CFG, seed=4)
    save_weights(w, tmp_path / "one")
    tensors = load_file(str(tmp_path / "one" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    d = tmp_path / "sharded"
    d.mkdir()
    for f, ns in shards.items():
        save_file({n: tensors[n] for n in ns}, str(d / f))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: f for f, ns in shards.items() for n in ns}}))
    (d / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    back = load_weights(d, dtype="float64")
    assert all(torch.equal(a, b) for a, b in zip(back.experts, w.experts))


def test_load_errors_name_the_problem(tmp_path):
    w = random_model(CFG, seed=5)
    save_weights(w, tmp_path)
    cfg_path, st = tmp_path / "config.json", tmp_path / "model.safetensors"
    hf = json.loads(cfg_path.read_text())
    tensors = load_file(str(st))

    cfg_path.write_text(json.dumps({**hf, "model_type": "llama"}))
    with pytest.raises(SpecMoEError, match="unknown weight layout model_type='llama'"):
        load_weights(tmp_path)
    cfg_path.write_text(json.dumps({**hf, "model_type": "qwen2_moe", "num_experts": 6,
                                    "moe_intermediate_size": 24}))
    with pytest.raises(SpecMoEError, match="unknown weight layout for 'qwen_moe'"):
        load_weights(tmp_path)

    cfg_path.write_text(json.dumps(hf))
    gone = "model.layers.1.block_sparse_moe.experts.4.w3.weight"
    save_file({k: v for k, v in tensors.items() if k != gone}, str(st))
    with pytest.raises(SpecMoEError, match=f"missing tensors.*{gone}"):
        load_weights(tmp_path)

    save_file(tensors, str(st))
    cfg_path.write_text(json.dumps({**hf, "intermediate_size": 20}))
    with pytest.raises(
        SpecMoEError, match=r"experts\.0\.w1\.weight: shape \[24, 32\].*expected \[20, 32\]"
    ):
        load_weights(tmp_path)


def test_to_hf_config_round_trips():
    for cfg in (CFG, CFG.with_(layout="qwen_moe", qk_norm=True)):
        back = MoEConfig.from_hf(to_hf_config(cfg), max_batch=cfg.max_batch)
        assert back == cfg


# ----------------------------------------------------------------------------- KV cache


def test_verify_block_equals_sequential_decode_and_rollback():
    """Logits of T positions at once equal T one-token steps; rolled-back garbage is never seen."""
    model = _model(random_model(CFG, seed=1))
    toks = torch.tensor([[3, 9, 1, 4, 7, 2], [5, 5, 8, 0, 1, 6]])
    c1 = KVCache(CFG, 2, 32, "cpu")
    block = model.logits(model.forward(toks, c1, "verify"))
    c2 = KVCache(CFG, 2, 32, "cpu")
    steps = []
    for t in range(toks.shape[1]):
        steps.append(model.logits(model.forward(toks[:, t: t + 1], c2, "decode")))
        c2.lengths[:2] += 1
    assert torch.allclose(block, torch.cat(steps, 1), atol=1e-10)
    # speculate 4 wrong tokens after position 3, roll back, continue with the right ones
    c3 = KVCache(CFG, 2, 32, "cpu")
    model.forward(toks[:, :3], c3, "prefill")
    c3.lengths[:2] = 3
    model.forward(torch.randint(0, CFG.vocab, (2, 4)), c3, "verify")  # rejected: lengths stay 3
    rest = model.logits(model.forward(toks[:, 3:], c3, "verify"))
    assert torch.allclose(rest, block[:, 3:], atol=1e-10)


def test_per_sequence_lengths_and_padded_prefill():
    model = _model(random_model(CFG, seed=2))
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    width = max(map(len, prompts))
    toks = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    valid = torch.tensor([[i < len(p) for i in range(width)] for p in prompts])
    cache = KVCache(CFG, 3, 32, "cpu")
    h = model.forward(toks, cache, "prefill", valid)
    cache.lengths[:3] = torch.tensor([len(p) for p in prompts])
    nxt = model.logits(model.forward(torch.tensor([[11], [12], [13]]), cache, "decode"))
    for b, p in enumerate(prompts):
        c = KVCache(CFG, 1, 32, "cpu")
        alone = model.forward(torch.tensor([p]), c, "prefill")
        assert torch.allclose(alone[0, -1], h[b, len(p) - 1], atol=1e-10)
        c.lengths[0] = len(p)
        one = model.logits(model.forward(torch.tensor([[11 + b]]), c, "decode"))
        assert torch.allclose(one[0], nxt[b], atol=1e-10)


def test_cache_limits():
    cache = KVCache(CFG, 2, 16, "cpu")
    with pytest.raises(SpecMoEError, match="batch=3 is larger than the KV cache"):
        cache.check(3, 4)
    with pytest.raises(SpecMoEError, match="exceeds the KV cache"):
        cache.check(2, 17)
    model = _model(random_model(CFG, seed=0))
    cache.lengths[:] = 15
    with pytest.raises(SpecMoEError, match="beyond max_seq_len"):
        model.forward(torch.zeros(2, 2, dtype=torch.long), cache)
