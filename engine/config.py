"""MoEConfig: the shapes of a decoder MoE transformer,
from a Hugging Face config.json or the catalog."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from specmoe.errors import SpecMoEError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
# Hugging Face model_type -> layout name used by weights.py.
LAYOUTS = {"mixtral": "mixtral", "qwen2_moe": "qwen_moe", "qwen3_moe": "qwen_moe"}


@dataclass(frozen=True)
class MoEConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    experts: int = 8
    top_k: int = 2
    expert_ffn: int = 64
    shared_expert_ffn: int = 0          # Qwen2-MoE shared expert (sigmoid-gated); 0 = none
    vocab: int = 128
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    norm_topk_prob: bool = True         # renormalise the top-k router weights to sum to 1
    max_seq_len: int = 256              # static KV cache length
    max_batch: int = 8                  # static KV cache batch
    dtype: str = "float32"
    qkv_bias: bool = False              # Qwen2-MoE q/k/v projections carry a bias
    qk_norm: bool = False               # Qwen3-MoE per-head RMSNorm on q and k
    tie_embeddings: bool = False
    layout: str = "mixtral"             # weight naming: mixtral | qwen_moe

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "kv_heads", "head_dim", "experts", "top_k",
                     "expert_ffn", "vocab", "max_seq_len", "max_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecMoEError(f"MoEConfig.{name}={v!r}: must be an int >= 1")
        if self.shared_expert_ffn < 0:
            raise SpecMoEError(
                f"MoEConfig.shared_expert_ffn={self.shared_expert_ffn}: must be >= 0"
            )
        if self.heads % self.kv_heads:
            raise SpecMoEError(
                f"MoEConfig.heads={self.heads} is not a multiple of kv_heads={self.kv_heads}"
            )
        if self.head_dim % 2:
            raise SpecMoEError(f"MoEConfig.head_dim={self.head_dim}: RoPE needs an even head_dim")
        if self.top_k > self.experts:
            raise SpecMoEError(f"MoEConfig.top_k={self.top_k}: more than experts={self.experts}")
        if self.dtype not in DTYPES:
            raise SpecMoEError(f"MoEConfig.dtype={self.dtype!r}: allowed {list(DTYPES)}")
        if self.layout not in set(LAYOUTS.values()):
            raise SpecMoEError(
                f"MoEConfig.layout={self.layout!r}: allowed {sorted(set(LAYOUTS.values()))}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def expert_params(self) -> int:
        """Parameters of one expert: w1 (gate) and w3 (up) [ffn, hidden], w2 (down) [hidden,
        ffn]."""
        return 3 * self.expert_ffn * self.hidden

    @property
    def expert_bytes(self) -> int:
        return self.expert_params * self.torch_dtype.itemsize

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> MoEConfig:
        return replace(self, **changes)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], **overrides: Any) -> MoEConfig:
        """From a Mixtral, Qwen2-MoE or Qwen3-MoE config.json dict."""
        mt = cfg.get("model_type")
        if mt not in LAYOUTS:
            raise SpecMoEError(f"config.json model_type={mt!r}: allowed {list(LAYOUTS)}")
        _check_unsupported(cfg, mt)
        heads = _get(cfg, "num_attention_heads")
        hidden = _get(cfg, "hidden_size")
        kw: dict[str, Any] = {
            "hidden": hidden, "layers": _get(cfg, "num_hidden_layers"), "heads": heads,
            "kv_heads": cfg.get("num_key_value_heads") or heads,
            "head_dim": cfg.get("head_dim") or hidden // heads,
            "vocab": _get(cfg, "vocab_size"), "rope_theta": _rope_theta(cfg),
            "rms_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
            # Full attention equals Mixtral's sliding window while sequences fit in the window.
            "max_seq_len": min(int(cfg.get("max_position_embeddings") or 4096), 4096,
                            int(cfg.get("sliding_window") or 4096) if mt == "mixtral" else 4096),
            "dtype": _dtype(cfg.get("torch_dtype") or cfg.get("dtype")), "layout": LAYOUTS[mt]}
        if mt == "mixtral":
            kw.update(
                experts=_get(cfg, "num_local_experts"),
                top_k=_get(cfg, "num_experts_per_tok"),
                expert_ffn=_get(cfg, "intermediate_size"),
                norm_topk_prob=True,
            )
        else:
            # Qwen releases write num_experts; transformers >= 5 saves it as num_local_experts
            experts = cfg.get("num_experts") or cfg.get("num_local_experts")
            kw.update(
                experts=experts or _get(cfg, "num_experts"),
                top_k=_get(cfg, "num_experts_per_tok"),
                expert_ffn=_get(cfg, "moe_intermediate_size"),
                norm_topk_prob=bool(cfg.get("norm_topk_prob") or False),
            )
            if mt == "qwen2_moe":
                kw.update(shared_expert_ffn=int(cfg.get("shared_expert_intermediate_size", 0)),
                          qkv_bias=bool(cfg.get("qkv_bias", True)))
            elif cfg.get("attention_bias"):
                raise SpecMoEError("config.json attention_bias=true (qwen3_moe): biased attention "
                                   "projections are not supported")
            else:
                kw.update(qk_norm=True)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_spec(cls, spec: Any, layers: int | None = None, **overrides: Any) -> MoEConfig:
        """From a catalog ModelSpec (specmoe.inputs.models) at its real shapes,
        with `layers` layers.

        Every layer becomes an MoE layer with GQA attention and SwiGLU experts: exact for Mixtral
        and Qwen-MoE, the shapes (not every detail) of the other GQA decoder families.
        """
        def need(name: str):
            if not hasattr(spec, name):
                raise SpecMoEError(
                    f"model spec {getattr(spec, 'name', spec)!r} lacks field {name!r}"
                )
            return getattr(spec, name)

        name = getattr(spec, "name", "?")
        if getattr(spec, "attention", "gqa") != "gqa":
            raise SpecMoEError(
                f"model {name!r}: attention={spec.attention!r}; the engine runs gqa only"
            )
        if getattr(spec, "encoder_layers", 0) or not getattr(spec, "gated_ffn", True):
            raise SpecMoEError(f"model {name!r}: encoder-decoder or non-gated FFN; the engine runs "
                               "decoder-only models with SwiGLU experts")
        family = str(getattr(spec, "family", ""))
        shared = int(getattr(spec, "num_shared_experts", 0) or 0) * int(
            getattr(spec, "shared_expert_intermediate_size", 0) or 0)
        kw: dict[str, Any] = {
            "hidden": need("hidden_size"),
            "layers": layers or need("num_layers"),
            "heads": need("num_heads"),
            "kv_heads": need("num_kv_heads"),
            "head_dim": need("head_dim"),
            "experts": need("num_experts"),
            "top_k": need("top_k"),
            "expert_ffn": need("expert_intermediate_size"),
            "shared_expert_ffn": shared,
            "vocab": need("vocab_size"),
            "rope_theta": float(getattr(spec, "rope_theta", 1e6) or 1e6),
            "rms_eps": float(getattr(spec, "rms_norm_eps", 1e-6) or 1e-6),
            "norm_topk_prob": bool(getattr(spec, "norm_topk_prob", True)),
            "qkv_bias": bool(getattr(spec, "attention_bias", False)),
            "qk_norm": family in ("qwen3_moe", "olmoe"),
            "tie_embeddings": bool(getattr(spec, "tie_embeddings", False)),
            "layout": "qwen_moe" if family.startswith("qwen") else "mixtral", "dtype": "bfloat16"}
        kw.update(overrides)
        return cls(**kw)


def _get(cfg: dict[str, Any], key: str):
    if cfg.get(key) is None:
        raise SpecMoEError(f"config.json lacks {key!r} (model_type={cfg.get('model_type')!r})")
    return cfg[key]


def _rope_theta(cfg: dict[str, Any]) -> float:
    """transformers >= 5 writes rope_parameters={rope_theta, rope_type};
    older configs rope_theta."""
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
    return float(theta or 1e6)


def _dtype(name: Any) -> str:
    name = str(name or "bfloat16").replace("torch.", "")
    return name if name in DTYPES else "bfloat16"


def _check_unsupported(cfg: dict[str, Any], mt: str) -> None:
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if rs and (rs.get("rope_type") or rs.get("type")) not in (None, "default"):
        raise SpecMoEError(f"config.json rope_scaling={rs}: only unscaled RoPE is supported")
    if cfg.get("mlp_only_layers"):
        raise SpecMoEError(
            f"config.json mlp_only_layers={cfg['mlp_only_layers']}: every layer must be MoE"
        )
    if int(cfg.get("decoder_sparse_step", 1)) != 1:
        raise SpecMoEError(
            f"config.json decoder_sparse_step={cfg['decoder_sparse_step']}: only 1 is supported"
        )
    if cfg.get("use_sliding_window"):
        raise SpecMoEError("config.json use_sliding_window=true: only full attention is supported")
