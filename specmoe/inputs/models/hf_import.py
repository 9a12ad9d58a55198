"""Reading a Hugging Face config.json (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, Phi-3.5-MoE,
GPT-OSS, Llama-4, NLLB-MoE) into a ModelSpec."""
from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.models.spec import MODEL_TYPES, MXFP4_BYTES, ModelSpec, _is_int


class _Cfg:
    """Typed reads from a config dict; errors name the file, field, value and what is allowed."""

    def __init__(self, d: dict, where: str, model_type: str):
        self.d, self.where, self.mt = d, where, model_type

    def _err(self, key, value, allowed):
        raise SpecMoEError(f"{self.where}: field {key!r} = {value!r}: {allowed}")

    def has(self, key) -> bool:
        return self.d.get(key) is not None

    def int(self, key, default=None, minimum=1, aliases=()):
        for k in (key, *aliases):
            if self.d.get(k) is not None:
                key = k
                break
        v = self.d.get(key)
        if v is None:
            if default is None:
                raise SpecMoEError(
                    f"{self.where}: required field {key!r} is missing (model_type {self.mt!r})"
                )
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not _is_int(v) or v < minimum:
            self._err(key, v, f"must be an integer >= {minimum}")
        return int(v)

    def bool(self, key, default: bool) -> bool:
        v = self.d.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            self._err(key, v, "must be true or false")
        return v

    def float(self, key, default: float) -> float:
        v = self.d.get(key)
        if v is None:
            return default
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or v <= 0:
            self._err(key, v, "must be a positive number")
        return float(v)

    def ints(self, key, default=()):
        v = self.d.get(key)
        if v is None:
            return list(default)
        if not isinstance(v, list) or not all(_is_int(i) and i >= 0 for i in v):
            self._err(key, v, "must be a list of integers >= 0")
        return list(v)


def _gqa(c: _Cfg) -> dict[str, Any]:
    h = c.int("hidden_size")
    heads = c.int("num_attention_heads")
    kv = c.int("num_key_value_heads", default=heads)
    if not c.has("head_dim") and h % heads:
        c._err(
            "num_attention_heads", heads, f"must divide hidden_size ({h}) when head_dim is absent"
        )
    if heads % kv:
        c._err("num_key_value_heads", kv, f"must divide num_attention_heads ({heads})")
    return {
        "hidden_size": h,
        "num_heads": heads,
        "num_kv_heads": kv,
        "head_dim": c.int("head_dim", default=h // heads),
        "attention": "gqa",
        **_NO_MLA,
        "num_layers": c.int("num_hidden_layers"),
        "vocab_size": c.int("vocab_size"),
        "tie_embeddings": c.bool("tie_word_embeddings", False),
        "gated_ffn": True,
        "rope_theta": c.float("rope_theta", 10000.0),
        "rms_norm_eps": c.float("rms_norm_eps", 1e-6),
    }


def _top_k(c: _Cfg, experts_key: str, k_key="num_experts_per_tok", aliases=()) -> tuple[int, int]:
    e = c.int(experts_key)
    k = c.int(k_key, aliases=aliases)
    if k > e:
        c._err(k_key, k, f"must be <= {experts_key} ({e})")
    return e, k


_NO_MLA = {
    "q_lora_rank": 0,
    "kv_lora_rank": 0,
    "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0,
    "v_head_dim": 0,
}


def _no_shared():
    return {"num_shared_experts": 0, "shared_expert_intermediate_size": 0}


def _window_all(c: _Cfg, n: int) -> dict[str, Any]:
    w = c.int("sliding_window", default=0, minimum=0)
    return {"sliding_window": w, "sliding_layer_ids": tuple(range(n)) if w else ()}


def _parse_mixtral(c: _Cfg) -> dict[str, Any]:
    kw = _gqa(c)
    e, k = _top_k(c, "num_local_experts")
    n = kw["num_layers"]
    kw.update(
        num_experts=e,
        top_k=k,
        expert_intermediate_size=c.int("intermediate_size"),
        moe_layer_ids=tuple(range(n)),
        dense_intermediate_size=0,
        **_no_shared(),
        **_window_all(c, n),
        rms_norm_eps=c.float("rms_norm_eps", 1e-5),
    )
    if c.mt == "phimoe":
        kw.update(
            attention_bias=c.bool("attention_bias", False),
            lm_head_bias=c.bool("lm_head_bias", False),
        )
    return kw


def _qwen_layers(c: _Cfg, n: int) -> tuple[int, ...]:
    step = c.int("decoder_sparse_step", default=1)
    only = set(c.ints("mlp_only_layers"))
    return tuple(i for i in range(n) if i not in only and (i + 1) % step == 0)


def _qwen_window(c: _Cfg, n: int) -> dict[str, Any]:
    if not c.bool("use_sliding_window", False) or not c.has("sliding_window"):
        return {}
    first = c.int("max_window_layers", default=n, minimum=0)
    ids = tuple(range(first, n))
    return {"sliding_window": c.int("sliding_window"), "sliding_layer_ids": ids} if ids else {}


def _parse_qwen(c: _Cfg) -> dict[str, Any]:
    kw = _gqa(c)
    n = kw["num_layers"]
    e, k = _top_k(c, "num_experts")
    moe = _qwen_layers(c, n)
    dense = c.int("intermediate_size") if len(moe) < n else 0
    kw.update(
        num_experts=e,
        top_k=k,
        expert_intermediate_size=c.int("moe_intermediate_size"),
        moe_layer_ids=moe,
        dense_intermediate_size=dense,
        **_no_shared(),
        **_qwen_window(c, n),
    )
    if c.mt == "qwen2_moe":
        shared = c.int("shared_expert_intermediate_size", default=0, minimum=0)
        kw.update(
            num_shared_experts=1 if shared else 0,
            shared_expert_intermediate_size=shared,
            attention_bias=True,
            norm_topk_prob=c.bool("norm_topk_prob", False),
        )
    else:
        kw.update(
            attention_bias=c.bool("attention_bias", False),
            norm_topk_prob=c.bool("norm_topk_prob", True),
        )
    return kw


def _parse_olmoe(c: _Cfg) -> dict[str, Any]:
    kw = _gqa(c)
    e, k = _top_k(c, "num_experts")
    kw.update(
        num_experts=e,
        top_k=k,
        expert_intermediate_size=c.int("intermediate_size"),
        moe_layer_ids=tuple(range(kw["num_layers"])),
        dense_intermediate_size=0,
        **_no_shared(),
        attention_bias=c.bool("attention_bias", False),
        norm_topk_prob=c.bool("norm_topk_prob", False),
        rms_norm_eps=c.float("rms_norm_eps", 1e-5),
    )
    return kw


def _parse_deepseek(c: _Cfg) -> dict[str, Any]:
    h, heads, n = c.int("hidden_size"), c.int("num_attention_heads"), c.int("num_hidden_layers")
    nope, rope = c.int("qk_nope_head_dim"), c.int("qk_rope_head_dim")
    e, k = _top_k(c, "n_routed_experts")
    first = c.int("first_k_dense_replace", default=0, minimum=0)
    freq = c.int("moe_layer_freq", default=1)
    moe = tuple(i for i in range(n) if i >= first and i % freq == 0)
    inter = c.int("moe_intermediate_size")
    shared = c.int("n_shared_experts", default=0, minimum=0)
    kw = {
        "hidden_size": h,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": nope + rope,
        "attention": "mla",
        "q_lora_rank": c.int("q_lora_rank", default=0, minimum=0),
        "kv_lora_rank": c.int("kv_lora_rank"),
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": c.int("v_head_dim"),
        "num_layers": n,
        "vocab_size": c.int("vocab_size"),
        "tie_embeddings": c.bool("tie_word_embeddings", False),
        "gated_ffn": True,
    }
    kw.update(
        num_experts=e,
        top_k=k,
        expert_intermediate_size=inter,
        moe_layer_ids=moe,
        num_shared_experts=shared,
        shared_expert_intermediate_size=inter if shared else 0,
        dense_intermediate_size=c.int("intermediate_size") if len(moe) < n else 0,
        rope_theta=c.float("rope_theta", 10000.0),
        rms_norm_eps=c.float("rms_norm_eps", 1e-6),
        norm_topk_prob=c.bool("norm_topk_prob", c.mt == "deepseek_v3"),
    )
    return kw


def _parse_gpt_oss(c: _Cfg) -> dict[str, Any]:
    kw = _gqa(c)
    n = kw["num_layers"]
    e, k = _top_k(c, "num_local_experts", aliases=("experts_per_token",))
    types = c.d.get("layer_types")
    if types is None:
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    if not isinstance(types, list) or len(types) != n:
        c._err("layer_types", types, f"must be a list of {n} attention types")
    w = c.int("sliding_window", default=0, minimum=0)
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention") if w else ()
    kw.update(
        num_experts=e,
        top_k=k,
        expert_intermediate_size=c.int("intermediate_size"),
        moe_layer_ids=tuple(range(n)),
        dense_intermediate_size=0,
        **_no_shared(),
        attention_bias=c.bool("attention_bias", True),
        ffn_bias=True,
        sliding_window=w,
        sliding_layer_ids=sliding,
        rms_norm_eps=c.float("rms_norm_eps", 1e-5),
    )
    return kw


def _parse_llama4(c: _Cfg) -> dict[str, Any]:
    kw = _gqa(c)
    n = kw["num_layers"]
    e, k = _top_k(c, "num_local_experts")
    step = c.int("interleave_moe_layer_step", default=1)
    moe = tuple(c.ints("moe_layers", default=range(step - 1, n, step)))
    inter = c.int("intermediate_size")
    chunk = c.int("attention_chunk_size", default=0, minimum=0)
    rope_layers = c.ints("no_rope_layers", default=[int((i + 1) % 4 != 0) for i in range(n)])
    if len(rope_layers) != n:
        c._err("no_rope_layers", rope_layers, f"must list {n} layers")
    # RoPE layers use chunked attention: a KV cache of at most one chunk
    sliding = tuple(i for i, r in enumerate(rope_layers) if r) if chunk else ()
    kw.update(
        num_experts=e,
        top_k=k,
        expert_intermediate_size=inter,
        moe_layer_ids=moe,
        num_shared_experts=1,
        shared_expert_intermediate_size=inter,
        dense_intermediate_size=c.int("intermediate_size_mlp") if len(moe) < n else 0,
        sliding_window=chunk,
        sliding_layer_ids=sliding,
        rms_norm_eps=c.float("rms_norm_eps", 1e-5),
    )
    return kw


def _parse_nllb(c: _Cfg) -> dict[str, Any]:
    h = c.int("d_model", aliases=("hidden_size",))
    heads = c.int("decoder_attention_heads")
    ffn = c.int("decoder_ffn_dim")
    for key, want in (("encoder_attention_heads", heads), ("encoder_ffn_dim", ffn)):
        if c.int(key, default=want) != want:
            c._err(
                key,
                c.d[key],
                f"must equal its decoder counterpart ({want}); asymmetric stacks are not supported",
            )
    if h % heads:
        c._err("decoder_attention_heads", heads, f"must divide d_model ({h})")
    n, n_enc = c.int("decoder_layers"), c.int("encoder_layers")
    e = c.int("num_experts")
    if e < 2:
        c._err("num_experts", e, "must be >= 2 (NLLB-MoE routes each token to its top-2 experts)")

    def sparse(layers, key):
        step = c.int(key, default=4, minimum=0)
        return tuple(i for i in range(layers) if step > 0 and (i + 1) % step == 0)

    kw = {
        "hidden_size": h,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": h // heads,
        "attention": "gqa",
        **_NO_MLA,
        "num_layers": n,
        "vocab_size": c.int("vocab_size"),
        "tie_embeddings": c.bool("tie_word_embeddings", True),
        "gated_ffn": False,
    }
    kw.update(
        num_experts=e,
        top_k=2,
        expert_intermediate_size=ffn,
        moe_layer_ids=sparse(n, "decoder_sparse_step"),
        **_no_shared(),
        dense_intermediate_size=ffn,
        encoder_layers=n_enc,
        encoder_moe_layer_ids=sparse(n_enc, "encoder_sparse_step"),
        attention_bias=True,
        ffn_bias=True,
        rms_norm_eps=1e-5,
    )
    return kw


_PARSERS = {
    "mixtral": _parse_mixtral,
    "phimoe": _parse_mixtral,
    "qwen2_moe": _parse_qwen,
    "qwen3_moe": _parse_qwen,
    "olmoe": _parse_olmoe,
    "deepseek_v2": _parse_deepseek,
    "deepseek_v3": _parse_deepseek,
    "gpt_oss": _parse_gpt_oss,
    "llama4": _parse_llama4,
    "nllb_moe": _parse_nllb,
}


def _quant_bytes(c: _Cfg) -> tuple[float, float | None]:
    """(bytes per routed-expert weight, bytes per quantised non-expert Linear weight or None)."""
    q = c.d.get("quantization_config")
    if not q:
        return 2.0, None
    if not isinstance(q, dict):
        c._err("quantization_config", q, "must be an object")
    method = str(q.get("quant_method", "")).lower()
    if method == "mxfp4":  # GPT-OSS: experts only; attention, router, embeddings stay bf16
        return MXFP4_BYTES, None
    if method == "fp8":  # all Linear weights; embeddings, norms, router, lm_head stay bf16
        block = q.get("weight_block_size")
        ok = (
            isinstance(block, list) and len(block) == 2 and all(_is_int(x) and x > 0 for x in block)
        )
        b = 1.0 + 4.0 / (block[0] * block[1]) if ok else 1.0  # a float32 scale per block
        return b, b
    if method in ("awq", "gptq"):
        bits, group = q.get("bits", 4), q.get("group_size", 128)
        if not _is_int(bits) or not _is_int(group) or bits <= 0:
            c._err("quantization_config", q, "needs integer 'bits' and 'group_size'")
        b = bits / 8 + (
            (2 + bits / 8) / group if group > 0 else 0.0
        )  # fp16 scale + packed zero per group
        return b, b
    c._err(
        "quantization_config.quant_method",
        method,
        "supported: fp8, mxfp4, awq, gptq (or set dtype bytes in the '_specmoe' block)",
    )


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecMoEError(f"model config {str(path)!r} cannot be read: {e.strerror}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecMoEError(
            f"model config {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno} "
            f"column {e.colno}"
        ) from None
    if not isinstance(d, dict):
        raise SpecMoEError(
            f"model config {str(path)!r} must hold a JSON object, got {type(d).__name__}"
        )
    return d


def normalize_name(name: str) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def from_hf_config(config: dict | str | Path, name: str | None = None) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (dict or path). A "_specmoe" block may carry
    {"name", "source", "dtype_bytes", "expert_dtype_bytes", "kv_dtype_bytes"}."""
    where = "config"
    if isinstance(config, (str, Path)):
        where = Path(config).name
        config = _read_json(Path(config))
    elif not isinstance(config, dict):
        raise SpecMoEError(
            f"config must be a dict or a path to config.json, got {type(config).__name__}"
        )
    meta = config.get("_specmoe") or {}
    if not isinstance(meta, dict):
        raise SpecMoEError(f"{where}: field '_specmoe' = {meta!r}: must be an object")
    mt = config.get("model_type")
    if mt is None:
        raise SpecMoEError(
            f"{where}: required field 'model_type' is missing "
            f"(supported: {', '.join(sorted(MODEL_TYPES))})"
        )
    family = MODEL_TYPES.get(str(mt).lower())
    if family is None:
        raise SpecMoEError(
            f"{where}: field 'model_type' = {mt!r} is not a supported MoE family "
            f"(supported: {', '.join(sorted(MODEL_TYPES))})"
        )
    body = config
    if family == "llama4" and isinstance(config.get("text_config"), dict):
        body = {
            **config["text_config"],
            "tie_word_embeddings": config.get(
                "tie_word_embeddings", config["text_config"].get("tie_word_embeddings", False)
            ),
        }
    c = _Cfg(body, where, family)
    kw = _PARSERS[family](c)
    source = str(meta.get("source") or config.get("_name_or_path") or "")
    spec_name = normalize_name(
        name or meta.get("name") or (source.rstrip("/").split("/")[-1] if source else mt)
    )
    expert_b, linear_b = _quant_bytes(_Cfg(config, where, family))
    try:
        spec = ModelSpec(
            name=spec_name, family=family, source=source, expert_dtype_bytes=expert_b, **kw
        )
        if (
            linear_b is not None
        ):  # mean over non-expert weights: quantised Linear layers + bf16 rest
            lin = spec._counts["resident_linear"]
            res = spec.resident_params
            spec = dataclasses.replace(spec, dtype_bytes=(lin * linear_b + (res - lin) * 2.0) / res)
        over = {
            k: meta[k] for k in ("dtype_bytes", "expert_dtype_bytes", "kv_dtype_bytes") if k in meta
        }
        return dataclasses.replace(spec, **over) if over else spec
    except SpecMoEError as e:
        raise SpecMoEError(f"{where}: {e}") from None


def spec_from_dims(name: str, dtype_bytes: float, hidden: int, ffn: int, heads: int, kv_heads: int,
                   head_dim: int, experts: int, top_k: int, vocab: int, layers: int,
                   shared_ffn: int = 0, tie_embeddings: bool = False) -> ModelSpec:
    """A ModelSpec from bare dimensions (an engine config, a microbenchmark's op): Mixtral layout,
    or Qwen2-MoE's where there is a shared expert. The inverse of the engine's
    MoEConfig.from_spec."""
    cfg = {
        "model_type": "qwen2_moe" if shared_ffn else "mixtral",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "num_experts_per_tok": min(top_k, experts),
        "tie_word_embeddings": bool(tie_embeddings),
        "_specmoe": {
            "name": name,
            "dtype_bytes": dtype_bytes,
            "expert_dtype_bytes": dtype_bytes,
            "kv_dtype_bytes": dtype_bytes,
        },
    }
    if shared_ffn:
        cfg.update(num_experts=experts, moe_intermediate_size=ffn, intermediate_size=ffn,
                   shared_expert_intermediate_size=shared_ffn)
    else:
        cfg.update(num_local_experts=experts, intermediate_size=ffn)
    return from_hf_config(cfg)
