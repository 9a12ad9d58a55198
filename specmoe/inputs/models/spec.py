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
import numbers
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from specmoe.errors import SpecMoEError

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
MXFP4_BYTES = 4.25 / 8
# Bytes per element of the dtype names traces and checkpoints use (torch's and short forms).
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2,
               "bf16": 2, "float8_e4m3fn": 1, "fp8": 1}  # 4-bit values + one 8-bit scale per 32


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
    def ffn_gemm_shapes(self, inter: int) -> list[tuple[int, int]]:
        """(n, k) of an FFN's weight GEMMs x[., k] @ W[k, n]: up (fused with the gate when
        gated) and down."""
        return [((2 if self.gated_ffn else 1) * inter, self.hidden_size),
                (self.hidden_size, inter)]

    def ffn_matmul_params(self, inter: int) -> int:
        """Weights of an FFN's matrices (no biases)."""
        return sum(n * k for n, k in self.ffn_gemm_shapes(inter))

    def _ffn_params(self, inter: int) -> int:
        h = self.hidden_size
        bias = ((2 * inter if self.gated_ffn else inter) + h) if self.ffn_bias else 0
        return self.ffn_matmul_params(inter) + bias

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
            * self.ffn_matmul_params(self.shared_expert_intermediate_size)
            + n_dense
            * (
                self.ffn_matmul_params(self.dense_intermediate_size)
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
