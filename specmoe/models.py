"""Model specs: the shapes of an MoE model, read from its Hugging Face config.json, and the bytes
and FLOPs they imply.

Conventions (figures are exact parameter counts of the Hugging Face module tree, text model only):
- `expert_params` is ONE routed expert (its matrices plus biases where the architecture has them).
- "resident" means everything that is not a routed expert: it stays in GPU memory under expert
  offloading. For NLLB-MoE (encoder-decoder) it includes the encoder's non-expert weights too.
- `experts_total_bytes` counts the decoder's routed experts (the ones decoding fetches); NLLB-MoE's
  encoder experts, used once per request in prefill, are `encoder_experts_total_bytes`.
- FLOPs count multiply-adds as 2. Per-layer figures are per token; elementwise work is not counted.
- `active_params_per_token` is every parameter a decoded token touches: all non-routed weights of
  the decoder (embedding table included, as Mistral, Qwen, OLMoE and DeepSeek count), plus top_k
  routed experts per MoE layer. OpenAI's GPT-OSS figures leave the embedding table out.
- MLA attention (DeepSeek) is costed in its weight-absorbed decode form: scores run over the cached
  latent (kv_lora_rank + qk_rope_head_dim per position).
- Bytes per weight follow the checkpoint as shipped: MXFP4 experts (GPT-OSS, 4.25 bits), block FP8
  (DeepSeek-V3, 1 byte + a float32 scale per 128×128 block); otherwise bf16. `torch_dtype` is not a
  serving choice and is ignored. With FP8, non-expert weights mix fp8 projections and bf16
  embeddings, norms and routers: dtype_bytes is their parameter-weighted mean, so resident_bytes is
  exact. A catalog entry's "_specmoe" block may override dtype_bytes, expert_dtype_bytes and
  kv_dtype_bytes.
- Sliding-window and chunked attention (GPT-OSS, Llama-4; Mixtral/Phi when set): layers in
  `sliding_layer_ids` see at most `sliding_window` positions. kv_bytes_per_token ignores that (full
  cache); kv_cache_bytes(context) and attn_score_flops_per_token(context) apply it.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import re
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from specmoe.errors import SpecMoEError, suggest

FAMILIES = (
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "phimoe",
    "gpt_oss",
    "llama4",
    "nllb_moe",
)
# Hugging Face model_type -> family
MODEL_TYPES = {**{f: f for f in FAMILIES}, "llama4_text": "llama4", "nllb-moe": "nllb_moe"}
_LAYERNORM = ("phimoe", "nllb_moe")  # LayerNorm (weight + bias); the others use RMSNorm (weight)
MXFP4_BYTES = 4.25 / 8  # 4-bit values + one 8-bit scale per 32
CATALOG_DIR = Path(__file__).parent / "data" / "models"
USER_DIR_ENV = "SPECMOE_MODELS_DIR"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    num_layers: int
    moe_layer_ids: tuple[int, ...]
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attention: str
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    num_experts: int
    top_k: int
    expert_intermediate_size: int
    num_shared_experts: int
    shared_expert_intermediate_size: int
    dense_intermediate_size: int
    gated_ffn: bool
    vocab_size: int
    tie_embeddings: bool
    dtype_bytes: float = 2.0
    expert_dtype_bytes: float = 2.0
    kv_dtype_bytes: float = 2.0
    encoder_layers: int = 0
    source: str = ""
    # Optional detail (defaults describe the plain case)
    encoder_moe_layer_ids: tuple[int, ...] = ()  # encoder layers with routed experts (NLLB-MoE)
    attention_bias: bool = False  # biases on q,k,v,o (Qwen2-MoE: q,k,v only)
    ffn_bias: bool = False  # biases on expert / dense FFN matrices (GPT-OSS, NLLB-MoE)
    lm_head_bias: bool = False  # Phi-3.5-MoE
    sliding_window: int = 0  # window (or chunk) of the layers in sliding_layer_ids
    sliding_layer_ids: tuple[int, ...] = ()  # layers whose attention and KV cache are bounded by it
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    norm_topk_prob: bool = True  # renormalise the top-k router weights

    def __post_init__(self):
        for f in ("moe_layer_ids", "encoder_moe_layer_ids", "sliding_layer_ids"):
            ids = getattr(self, f)
            if isinstance(ids, (str, bytes)) or not all(_is_int(i) for i in ids):
                _bad(f, ids, "must be a sequence of integer layer indices")
            object.__setattr__(self, f, tuple(int(i) for i in ids))
        _validate(self)

    # ---- counts ---------------------------------------------------------------------------------
    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_ids)

    @property
    def dense_layer_ids(self) -> tuple[int, ...]:
        moe = set(self.moe_layer_ids)
        return tuple(i for i in range(self.num_layers) if i not in moe)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def num_encoder_moe_layers(self) -> int:
        return len(self.encoder_moe_layer_ids)

    @property
    def is_mla(self) -> bool:
        return self.attention == "mla"

    # ---- parameters -----------------------------------------------------------------------------
    def _ffn_params(self, inter: int) -> int:
        h = self.hidden_size
        mats = (3 if self.gated_ffn else 2) * h * inter
        bias = ((2 * inter if self.gated_ffn else inter) + h) if self.ffn_bias else 0
        return mats + bias

    def _ffn_matmul(self, inter: int) -> int:
        return (3 if self.gated_ffn else 2) * self.hidden_size * inter

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert."""
        return self._ffn_params(self.expert_intermediate_size)

    @cached_property
    def _attn(self) -> dict[str, int]:
        """Self-attention of one decoder layer: q/k/v/o matrices (`proj`), and everything else."""
        h, H, KV, d = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = h * self.q_lora_rank + self.q_lora_rank * H * qk if self.q_lora_rank else h * H * qk
            kv = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv += self.kv_lora_rank * H * (self.qk_nope_head_dim + self.v_head_dim)
            proj = q + kv + H * self.v_head_dim * h
            other = self.q_lora_rank + self.kv_lora_rank  # the two latent RMSNorms
        else:
            proj = 2 * h * H * d + 2 * h * KV * d
            other = 0
            if self.attention_bias:
                other += H * d + 2 * KV * d + (0 if self.family == "qwen2_moe" else h)
            if self.family == "qwen3_moe":
                other += 2 * d  # per-head q/k RMSNorm
            elif self.family == "olmoe":
                other += (H + KV) * d  # q/k RMSNorm over all heads
            elif self.family == "gpt_oss":
                other += H  # attention sinks
        return {"proj": proj, "other": other}

    @property
    def _cross_attn_params(self) -> int:
        """Encoder-decoder cross-attention of one decoder layer (NLLB-MoE), 0 otherwise."""
        if not self.encoder_layers:
            return 0
        a = self._attn
        return a["proj"] + a["other"]

    def _norm(self, n: int) -> int:
        return n * self.hidden_size * (2 if self.family in _LAYERNORM else 1)

    @property
    def router_params(self) -> int:
        """Router of one MoE layer, with small extras (biases, Qwen2-MoE's shared-expert gate)."""
        p = self.hidden_size * self.num_experts
        if self.family in ("gpt_oss", "deepseek_v3"):
            p += self.num_experts  # router bias / e_score_correction_bias
        if self.family == "qwen2_moe" and self.num_shared_experts:
            p += self.hidden_size
        return p

    @property
    def shared_params(self) -> int:
        """All shared experts of one MoE layer."""
        return self.num_shared_experts * self._ffn_params(self.shared_expert_intermediate_size)

    @property
    def dense_ffn_params(self) -> int:
        return self._ffn_params(self.dense_intermediate_size) if self.dense_intermediate_size else 0

    @cached_property
    def _counts(self) -> dict[str, int]:
        a = self._attn
        attn = a["proj"] + a["other"] + self._cross_attn_params
        per_layer_common = attn + self._norm(3 if self.encoder_layers else 2)
        moe = self.router_params + self.shared_params + self.num_experts * self.expert_params
        decoder = (
            self.num_layers * per_layer_common
            + self.num_moe_layers * moe
            + self.num_dense_layers * self.dense_ffn_params
            + self._norm(1)
        )
        encoder = 0
        if self.encoder_layers:
            enc_dense = self.encoder_layers - self.num_encoder_moe_layers
            encoder = (
                self.encoder_layers * (a["proj"] + a["other"] + self._norm(2))
                + self.num_encoder_moe_layers * moe
                + enc_dense * self.dense_ffn_params
                + self._norm(1)
            )
        embed = self.vocab_size * self.hidden_size
        lm_head = (
            0 if self.tie_embeddings else embed + (self.vocab_size if self.lm_head_bias else 0)
        )
        routed = (
            (self.num_moe_layers + self.num_encoder_moe_layers)
            * self.num_experts
            * self.expert_params
        )
        total = embed + lm_head + decoder + encoder
        # weights that are matrices of Linear layers outside the routed experts (quantisable)
        cross_proj = a["proj"] if self.encoder_layers else 0
        n_shared = self.num_moe_layers + self.num_encoder_moe_layers
        n_dense = self.num_dense_layers + (
            self.encoder_layers - self.num_encoder_moe_layers if self.encoder_layers else 0
        )
        linear = (
            (self.num_layers + self.encoder_layers) * a["proj"]
            + self.num_layers * cross_proj
            + n_shared
            * self.num_shared_experts
            * self._ffn_matmul(self.shared_expert_intermediate_size)
            + n_dense
            * (
                self._ffn_matmul(self.dense_intermediate_size)
                if self.dense_intermediate_size
                else 0
            )
        )
        return {
            "total": total,
            "routed": routed,
            "encoder": encoder,
            "embed": embed,
            "lm_head": lm_head,
            "resident_linear": linear,
        }

    @property
    def total_params(self) -> int:
        return self._counts["total"]

    @property
    def resident_params(self) -> int:
        return self._counts["total"] - self._counts["routed"]

    @property
    def active_params_per_token(self) -> int:
        """Decoder only for NLLB-MoE (its encoder runs once per request)."""
        unused = (self.num_experts - self.top_k) * self.expert_params * self.num_moe_layers
        return self._counts["total"] - self._counts["encoder"] - unused

    @property
    def embedding_params(self) -> int:
        """The input embedding table (a lookup, not a matmul)."""
        return self._counts["embed"]

    # ---- bytes ----------------------------------------------------------------------------------
    @property
    def expert_bytes(self) -> float:
        return self.expert_params * self.expert_dtype_bytes

    @property
    def experts_total_bytes(self) -> float:
        """Routed experts of all decoder MoE layers."""
        return self.num_moe_layers * self.num_experts * self.expert_bytes

    @property
    def encoder_experts_total_bytes(self) -> float:
        return self.num_encoder_moe_layers * self.num_experts * self.expert_bytes

    @property
    def resident_bytes(self) -> float:
        """Everything but routed experts: embeddings, lm_head, attention, norms, routers, shared
        experts, dense FFN layers (and NLLB-MoE's encoder outside its experts)."""
        return self.resident_params * self.dtype_bytes

    @property
    def total_bytes(self) -> float:
        return self.resident_bytes + self.experts_total_bytes + self.encoder_experts_total_bytes

    @property
    def kv_bytes_per_token_per_layer(self) -> float:
        if self.is_mla:
            return (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_dtype_bytes
        return 2 * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def kv_bytes_per_token(self) -> float:
        """All decoder layers, ignoring sliding windows (see kv_cache_bytes)."""
        return self.num_layers * self.kv_bytes_per_token_per_layer

    def _windowed(self, context):
        """Mean over decoder layers of the positions attended at `context` (sliding ones capped)."""
        ctx = np.asarray(context, dtype=float)
        frac = len(self.sliding_layer_ids) / self.num_layers
        out = (1 - frac) * ctx + frac * np.minimum(ctx, self.sliding_window) if frac else ctx
        return float(out) if np.ndim(out) == 0 else out

    def kv_cache_bytes(self, context):
        """KV cache of one sequence holding `context` positions, sliding-window layers capped."""
        return self.num_layers * self.kv_bytes_per_token_per_layer * self._windowed(context)

    def cross_kv_bytes(self, source_len):
        """NLLB-MoE: cross-attention K/V of one sequence over `source_len` encoder outputs, all
        decoder layers (computed once at prefill; 0 for decoder-only models)."""
        per_pos = (
            2 * self.num_heads * self.head_dim * self.kv_dtype_bytes if self.encoder_layers else 0
        )
        return self.num_layers * per_pos * np.asarray(source_len, dtype=float)

    @property
    def attn_weight_bytes_per_layer(self) -> float:
        """Attention weights of one decoder layer (self-, plus cross-attention for NLLB-MoE)."""
        a = self._attn
        return (a["proj"] + a["other"] + self._cross_attn_params) * self.dtype_bytes

    # ---- FLOPs ----------------------------------------------------------------------------------
    @property
    def attn_proj_flops_per_token(self) -> float:
        """One decoder layer: 2 × the q/k/v/o projection weights a decoded token multiplies (MLA:
        its latent projections; NLLB-MoE adds cross-attention q and o, whose k/v run at prefill)."""
        cross = 2 * self.hidden_size * self.num_heads * self.head_dim if self.encoder_layers else 0
        return 2.0 * (self._attn["proj"] + cross)

    def attn_score_flops_per_token(self, context):
        """One decoder layer: QKᵀ and PV over `context` cached positions (scalar or numpy array).
        Sliding-window layers see at most their window; the figure is the mean over layers."""
        if self.is_mla:
            per_pos = 2 * self.num_heads * (2 * self.kv_lora_rank + self.qk_rope_head_dim)
        else:
            per_pos = 4 * self.num_heads * self.head_dim
        return per_pos * self._windowed(context)

    def cross_attn_score_flops_per_token(self, source_len):
        """NLLB-MoE decoder layer: attention over the `source_len` encoder outputs (0 otherwise)."""
        if not self.encoder_layers:
            return 0.0 * np.asarray(source_len, dtype=float)
        return 4.0 * self.num_heads * self.head_dim * np.asarray(source_len, dtype=float)

    @property
    def router_flops_per_token(self) -> float:
        return 2.0 * self.hidden_size * self.num_experts

    @property
    def expert_flops_per_token(self) -> float:
        """One token through one routed expert."""
        return 2.0 * self.expert_params

    @property
    def shared_expert_flops_per_token(self) -> float:
        """One MoE layer, all its shared experts."""
        return 2.0 * self.shared_params

    @property
    def dense_ffn_flops_per_token(self) -> float:
        return 2.0 * self.dense_ffn_params

    @property
    def lm_head_flops_per_token(self) -> float:
        return 2.0 * self.hidden_size * self.vocab_size

    @property
    def encoder_flops_per_token(self) -> float:
        """NLLB-MoE: one source token through the whole encoder, attention scores excluded."""
        if not self.encoder_layers:
            return 0.0
        moe = self.router_flops_per_token + self.top_k * self.expert_flops_per_token
        dense = self.encoder_layers - self.num_encoder_moe_layers
        return (
            self.encoder_layers * 2.0 * self._attn["proj"]
            + self.num_encoder_moe_layers * moe
            + dense * self.dense_ffn_flops_per_token
        )

    def forward_flops_per_token(self, context):
        """One decoded token through the whole decoder with `context` cached positions."""
        moe = (
            self.router_flops_per_token
            + self.top_k * self.expert_flops_per_token
            + self.shared_expert_flops_per_token
        )
        per_layer = self.attn_proj_flops_per_token + self.attn_score_flops_per_token(context)
        return (
            self.num_layers * per_layer
            + self.num_moe_layers * moe
            + self.num_dense_layers * self.dense_ffn_flops_per_token
            + self.lm_head_flops_per_token
        )

    # ---- export ---------------------------------------------------------------------------------
    def derived(self) -> dict[str, Any]:
        names = (
            "num_moe_layers",
            "num_dense_layers",
            "expert_params",
            "expert_bytes",
            "experts_total_bytes",
            "encoder_experts_total_bytes",
            "resident_params",
            "resident_bytes",
            "total_bytes",
            "total_params",
            "active_params_per_token",
            "kv_bytes_per_token",
            "kv_bytes_per_token_per_layer",
            "attn_weight_bytes_per_layer",
            "attn_proj_flops_per_token",
            "router_flops_per_token",
            "expert_flops_per_token",
            "shared_expert_flops_per_token",
            "dense_ffn_flops_per_token",
            "lm_head_flops_per_token",
            "encoder_flops_per_token",
        )
        return {n: getattr(self, n) for n in names}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the fields, then the derived figures under "derived"."""
        d = {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)
        }
        d["derived"] = self.derived()
        return d

    def to_hf_config(self) -> dict[str, Any]:
        """A Hugging Face-style config.json that from_hf_config reads back to this spec."""
        return _emit(self)


# ---- validation ----
_POSITIVE = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "num_experts",
    "top_k",
    "expert_intermediate_size",
    "vocab_size",
)
_NON_NEGATIVE = (
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "num_shared_experts",
    "shared_expert_intermediate_size",
    "dense_intermediate_size",
    "encoder_layers",
    "sliding_window",
)


def _bad(name: str, value, allowed: str):
    raise SpecMoEError(f"ModelSpec field {name!r} = {value!r}: {allowed}")


def _validate(s: ModelSpec) -> None:
    if s.family not in FAMILIES:
        _bad("family", s.family, f"must be one of {', '.join(FAMILIES)}")
    if s.attention not in ("gqa", "mla"):
        _bad("attention", s.attention, "must be 'gqa' or 'mla'")
    for f in _POSITIVE:
        v = getattr(s, f)
        if not _is_int(v) or v <= 0:
            _bad(f, v, "must be a positive integer")
    for f in _NON_NEGATIVE:
        v = getattr(s, f)
        if not _is_int(v) or v < 0:
            _bad(f, v, "must be an integer >= 0")
    for f in ("dtype_bytes", "expert_dtype_bytes", "kv_dtype_bytes"):
        v = getattr(s, f)
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not (0 < v < 64):
            _bad(f, v, "must be a positive number of bytes per value")
    if s.top_k > s.num_experts:
        _bad("top_k", s.top_k, f"must be <= num_experts ({s.num_experts})")
    if s.num_heads % s.num_kv_heads:
        _bad("num_kv_heads", s.num_kv_heads, f"must divide num_heads ({s.num_heads})")
    if s.attention == "mla":
        for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if getattr(s, f) <= 0:
                _bad(f, getattr(s, f), "must be positive for MLA attention")
    _check_ids("moe_layer_ids", s.moe_layer_ids, s.num_layers, nonempty=True)
    _check_ids("sliding_layer_ids", s.sliding_layer_ids, s.num_layers)
    _check_ids("encoder_moe_layer_ids", s.encoder_moe_layer_ids, s.encoder_layers)
    if s.sliding_layer_ids and s.sliding_window <= 0:
        _bad(
            "sliding_window", s.sliding_window, "must be positive when sliding_layer_ids are given"
        )
    if s.num_shared_experts and s.shared_expert_intermediate_size <= 0:
        _bad(
            "shared_expert_intermediate_size",
            s.shared_expert_intermediate_size,
            "must be positive when num_shared_experts > 0",
        )
    has_dense = s.num_moe_layers < s.num_layers or (s.encoder_layers > len(s.encoder_moe_layer_ids))
    if has_dense and s.dense_intermediate_size <= 0:
        _bad(
            "dense_intermediate_size",
            s.dense_intermediate_size,
            "must be positive when some layers have a dense FFN",
        )
    if s.family == "nllb_moe" and s.encoder_layers <= 0:
        _bad("encoder_layers", s.encoder_layers, "must be positive for nllb_moe (encoder-decoder)")


def _check_ids(name: str, ids: tuple[int, ...], n: int, nonempty: bool = False) -> None:
    if nonempty and not ids:
        _bad(
            name,
            list(ids),
            "must name at least one layer (a model with no routed experts is not MoE)",
        )
    if list(ids) != sorted(set(ids)) or any(i < 0 or i >= n for i in ids):
        _bad(name, list(ids), f"must be sorted, distinct layer indices in [0, {n})")


# ---- parsing Hugging Face configs ----
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


# ---- emitting Hugging Face configs (the inverse, for save_to_catalog) ----
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


# ---- catalog ----
def user_catalog_dir() -> Path:
    """Where `specmoe models import` writes: $SPECMOE_MODELS_DIR, else ~/.specmoe/models."""
    env = os.environ.get(USER_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".specmoe" / "models"


def _catalog() -> dict[str, Path]:
    """name -> file; user entries shadow shipped ones."""
    out: dict[str, Path] = {}
    for d in (CATALOG_DIR, user_catalog_dir()):
        if d.is_dir():
            out.update({p.stem: p for p in sorted(d.glob("*.json"))})
    return out


def list_models() -> list[str]:
    return sorted(_catalog())


def _resolve_path(p: Path) -> Path:
    return p / "config.json" if p.is_dir() else p


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A catalog model by name (case-insensitive, '_' for '-', or its source such as a Hugging Face
    repo id), or a config.json path (or a directory holding one)."""
    raw = str(name_or_path)
    if Path(raw).expanduser().exists():
        return from_hf_config(_resolve_path(Path(raw).expanduser()))
    cat = _catalog()
    key = normalize_name(raw)
    if key in cat:
        return from_hf_config(cat[key], name=key)
    for n, p in cat.items():  # by source, e.g. "mistralai/Mixtral-8x7B-v0.1"
        src = (_read_json(p).get("_specmoe") or {}).get("source", "")
        if src and src.lower() == raw.strip().lower():
            return from_hf_config(p, name=n)
    if raw.endswith(".json"):
        raise SpecMoEError(f"model config file {raw!r} does not exist")
    hint = suggest(key, cat) or f" (known: {', '.join(sorted(cat))})"
    raise SpecMoEError(f"model {raw!r} is not in the catalog{hint}; or give a config.json path")


def save_to_catalog(
    spec_or_config: ModelSpec | dict | str | Path,
    name: str | None = None,
    directory: str | Path | None = None,
) -> Path:
    """Write a model as an HF-style config.json with a "_specmoe" {"name", "source"} block,
    atomically, to `directory` (default: user_catalog_dir()) as <name>.json. Without `name`, the
    config's own name is used. The config is parsed first, so bad input never lands."""
    if isinstance(spec_or_config, ModelSpec):
        spec = spec_or_config
        cfg = None
    else:
        if isinstance(spec_or_config, (str, Path)):
            cfg = _read_json(_resolve_path(Path(spec_or_config).expanduser()))
        elif isinstance(spec_or_config, dict):
            cfg = dict(spec_or_config)
        else:
            raise SpecMoEError(
                f"save_to_catalog: expected a ModelSpec, config dict or path, "
                f"got {type(spec_or_config).__name__}"
            )
        spec = from_hf_config(cfg)  # validate before writing
    key = normalize_name(name) if name else spec.name
    if not _NAME_RE.match(key):
        raise SpecMoEError(
            f"model name {key!r}: use lowercase letters, digits, '.', '+' and '-' only"
        )
    if cfg is None:
        cfg = dataclasses.replace(spec, name=key).to_hf_config()
    else:
        meta = dict(cfg.get("_specmoe") or {})
        meta["name"] = key
        meta.setdefault("source", spec.source)
        cfg["_specmoe"] = meta
    out_dir = Path(directory) if directory is not None else user_catalog_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{key}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cfg, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
