"""Writing a ModelSpec back as a Hugging Face-style config.json (the inverse of hf_import)."""
from __future__ import annotations

from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.models.spec import ModelSpec


def _cannot(s: ModelSpec, what: str):
    raise SpecMoEError(
        f"model {s.name!r} ({s.family}): {what} cannot be written as a {s.family} config.json"
    )


def _emit_gqa(s: ModelSpec) -> dict[str, Any]:
    return {
        "hidden_size": s.hidden_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "vocab_size": s.vocab_size,
        "tie_word_embeddings": s.tie_embeddings,
        "rope_theta": s.rope_theta,
        "rms_norm_eps": s.rms_norm_eps,
    }


def _need_all_moe(s: ModelSpec):
    if s.moe_layer_ids != tuple(range(s.num_layers)):
        _cannot(s, "dense (non-MoE) layers")


def _need_no_shared(s: ModelSpec):
    if s.num_shared_experts:
        _cannot(s, "shared experts")


def _step_layers(s: ModelSpec, ids, n) -> int:
    """The step of an `(i + 1) % step == 0` layer pattern, or raise."""
    step = ids[0] + 1 if ids else 0
    if tuple(i for i in range(n) if step and (i + 1) % step == 0) != tuple(ids):
        _cannot(s, f"MoE layers {list(ids)}")
    return step


def _emit(s: ModelSpec) -> dict[str, Any]:
    f, d = s.family, {"model_type": s.family}
    if f in ("mixtral", "phimoe"):
        _need_all_moe(s)
        _need_no_shared(s)
        d.update(
            _emit_gqa(s),
            num_local_experts=s.num_experts,
            num_experts_per_tok=s.top_k,
            intermediate_size=s.expert_intermediate_size,
        )
        if s.sliding_layer_ids:
            if s.sliding_layer_ids != tuple(range(s.num_layers)):
                _cannot(s, "sliding windows on some layers only")
            d["sliding_window"] = s.sliding_window
        if f == "phimoe":
            d.update(attention_bias=s.attention_bias, lm_head_bias=s.lm_head_bias)
    elif f in ("qwen2_moe", "qwen3_moe"):
        d.update(
            _emit_gqa(s),
            num_experts=s.num_experts,
            num_experts_per_tok=s.top_k,
            moe_intermediate_size=s.expert_intermediate_size,
            decoder_sparse_step=1,
            mlp_only_layers=list(s.dense_layer_ids),
            norm_topk_prob=s.norm_topk_prob,
        )
        if s.dense_intermediate_size:
            d["intermediate_size"] = s.dense_intermediate_size
        if s.sliding_layer_ids:
            first = s.sliding_layer_ids[0]
            if s.sliding_layer_ids != tuple(range(first, s.num_layers)):
                _cannot(s, "sliding windows other than on the last layers")
            d.update(
                use_sliding_window=True, sliding_window=s.sliding_window, max_window_layers=first
            )
        if f == "qwen2_moe":
            if s.num_shared_experts > 1:
                _cannot(s, "more than one shared expert")
            d["shared_expert_intermediate_size"] = s.shared_expert_intermediate_size
        else:
            _need_no_shared(s)
            d["attention_bias"] = s.attention_bias
    elif f == "olmoe":
        _need_all_moe(s)
        _need_no_shared(s)
        d.update(
            _emit_gqa(s),
            num_experts=s.num_experts,
            num_experts_per_tok=s.top_k,
            intermediate_size=s.expert_intermediate_size,
            attention_bias=s.attention_bias,
            norm_topk_prob=s.norm_topk_prob,
        )
    elif f in ("deepseek_v2", "deepseek_v3"):
        ids = s.moe_layer_ids
        first, freq = ids[0], (ids[1] - ids[0] if len(ids) > 1 else 1)
        if tuple(i for i in range(s.num_layers) if i >= first and i % freq == 0) != ids:
            _cannot(s, f"MoE layers {list(ids)}")
        if s.num_shared_experts and s.shared_expert_intermediate_size != s.expert_intermediate_size:
            _cannot(s, "shared experts of a different size than the routed ones")
        d.update(
            hidden_size=s.hidden_size,
            num_hidden_layers=s.num_layers,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_heads,
            q_lora_rank=s.q_lora_rank or None,
            kv_lora_rank=s.kv_lora_rank,
            qk_nope_head_dim=s.qk_nope_head_dim,
            qk_rope_head_dim=s.qk_rope_head_dim,
            v_head_dim=s.v_head_dim,
            vocab_size=s.vocab_size,
            tie_word_embeddings=s.tie_embeddings,
            n_routed_experts=s.num_experts,
            num_experts_per_tok=s.top_k,
            moe_intermediate_size=s.expert_intermediate_size,
            n_shared_experts=s.num_shared_experts,
            first_k_dense_replace=first,
            moe_layer_freq=freq,
            norm_topk_prob=s.norm_topk_prob,
            rope_theta=s.rope_theta,
            rms_norm_eps=s.rms_norm_eps,
        )
        if s.dense_intermediate_size:
            d["intermediate_size"] = s.dense_intermediate_size
    elif f == "gpt_oss":
        _need_all_moe(s)
        _need_no_shared(s)
        sl = set(s.sliding_layer_ids)
        d.update(
            _emit_gqa(s),
            num_local_experts=s.num_experts,
            num_experts_per_tok=s.top_k,
            intermediate_size=s.expert_intermediate_size,
            attention_bias=s.attention_bias,
            sliding_window=s.sliding_window,
            layer_types=[
                "sliding_attention" if i in sl else "full_attention" for i in range(s.num_layers)
            ],
        )
    elif f == "llama4":
        if (
            s.num_shared_experts != 1
            or s.shared_expert_intermediate_size != s.expert_intermediate_size
        ):
            _cannot(s, "anything but one shared expert the size of a routed one")
        sl = set(s.sliding_layer_ids)
        text = {
            **_emit_gqa(s),
            "model_type": "llama4_text",
            "num_local_experts": s.num_experts,
            "num_experts_per_tok": s.top_k,
            "intermediate_size": s.expert_intermediate_size,
            "moe_layers": list(s.moe_layer_ids),
            "attention_chunk_size": s.sliding_window or None,
            "no_rope_layers": [int(i in sl) for i in range(s.num_layers)],
        }
        if s.dense_intermediate_size:
            text["intermediate_size_mlp"] = s.dense_intermediate_size
        d = {"model_type": "llama4", "text_config": text, "tie_word_embeddings": s.tie_embeddings}
    elif f == "nllb_moe":
        if s.top_k != 2 or s.expert_intermediate_size != s.dense_intermediate_size:
            _cannot(s, "top_k other than 2 or experts of another size than the dense FFN")
        d = {
            "model_type": "nllb-moe",
            "d_model": s.hidden_size,
            "encoder_layers": s.encoder_layers,
            "decoder_layers": s.num_layers,
            "encoder_attention_heads": s.num_heads,
            "decoder_attention_heads": s.num_heads,
            "encoder_ffn_dim": s.expert_intermediate_size,
            "decoder_ffn_dim": s.expert_intermediate_size,
            "num_experts": s.num_experts,
            "encoder_sparse_step": _step_layers(s, s.encoder_moe_layer_ids, s.encoder_layers),
            "decoder_sparse_step": _step_layers(s, s.moe_layer_ids, s.num_layers),
            "vocab_size": s.vocab_size,
            "tie_word_embeddings": s.tie_embeddings,
        }
    meta = {"name": s.name, "source": s.source}
    meta.update(
        {
            k: getattr(s, k)
            for k in ("dtype_bytes", "expert_dtype_bytes", "kv_dtype_bytes")
            if getattr(s, k) != 2.0
        }
    )
    d["_specmoe"] = meta
    return d




def to_hf_config(spec: ModelSpec) -> dict[str, Any]:
    """A Hugging Face-style config.json that from_hf_config reads back to this spec."""
    return _emit(spec)
