"""Logit parity with transformers' Mixtral, Qwen2-MoE and Qwen3-MoE on small random configs.

The reference model is built by transformers, saved with save_pretrained (the Hugging Face layout
on disk) and loaded by specmoe.engine.weights. Weights are re-drawn at unit scale so that every
part (attention, router, experts, shared expert, biases, q/k norms) moves the logits.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from specmoe.engine.generate import Engine
from specmoe.engine.model import KVCache, Transformer
from specmoe.engine.moe import ResidentExperts
from specmoe.engine.weights import load_weights

from specmoe.inputs.policies import make_policy

COMMON = {"vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_experts_per_tok": 2, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-6}


def _mixtral():
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(
        intermediate_size=24, num_local_experts=6, **COMMON))


def _qwen2():
    return transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
        moe_intermediate_size=24, num_experts=6, shared_expert_intermediate_size=40,
        intermediate_size=40, norm_topk_prob=False, **COMMON))


def _qwen3():
    return transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        moe_intermediate_size=24, num_experts=6, norm_topk_prob=True, head_dim=12, **COMMON))


def _saved(build, tmp_path):
    torch.manual_seed(0)
    m = build().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "bias" in name:
                p.normal_(0, 0.1)
            else:
                p.normal_(0, p.shape[-1] ** -0.5)
    m.save_pretrained(tmp_path)
    return m


@pytest.mark.parametrize(
    "build", [_mixtral, _qwen2, _qwen3], ids=["mixtral", "qwen2_moe", "qwen3_moe"]
)
def test_logits_match_transformers(build, tmp_path):
    ref_model = _saved(build, tmp_path)
    w = load_weights(tmp_path)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_model(ids).logits
    model = Transformer(w.cfg, w.dense, ResidentExperts(w.cfg, w.experts, "cpu"))
    out = model.logits(model.forward(ids, KVCache(w.cfg, 2, 32, "cpu"), "prefill"))
    assert ref.std() > 0.5  # unit-scale logits: a wrong expert or norm would show
    assert torch.allclose(out, ref, atol=2e-5, rtol=1e-4), (out - ref).abs().max()


def test_greedy_generation_matches_transformers(tmp_path):
    """Offloaded engine (specmoe policy, speculative) emits transformers' greedy tokens."""
    ref_model = _saved(_mixtral, tmp_path)
    prompt = [5, 17, 3, 88, 41]
    with torch.no_grad():
        ref = ref_model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                 min_new_tokens=10)[0, len(prompt):].tolist()
    for policy in (make_policy("ondemand"), make_policy("specmoe", gamma=3, draft_experts=2)):
        eng = Engine(tmp_path, policy, max_seq_len=32, max_batch=1)
        assert eng.generate([prompt], 10).tokens[0] == ref, policy.name
