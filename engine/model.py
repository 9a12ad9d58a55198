"""Decoder MoE transformer over a static KV cache (Mixtral / Qwen2-MoE / Qwen3-MoE semantics).

One forward serves every phase: prefill (T prompt tokens), decode (T = 1), drafting (T = 1 or 2)
and verification (T = gamma + 1, causal among them). Token t of sequence b sits at position
cache.lengths[b] + t; its K/V are written there and it attends to positions <= its own. The model
never moves lengths: the caller advances them after accepting tokens, and rollback of rejected
positions is just setting lengths back (stale entries beyond a length are never attended, and are
overwritten by the next write).

Prefill of prompts of different lengths: right-pad to the longest and pass `valid` (False on
padding). Padding tokens write K/V beyond their sequence's length (harmless, as above) and are
kept out of the MoE, so they neither fetch experts nor appear in routing records.

The MoE block routes (softmax, top-k) and hands the experts to `self.experts`, an expert provider
(moe.py, policies.py) that decides where each expert comes from.
"""
from __future__ import annotations

import torch
from specmoe.engine import ops
from specmoe.engine.config import MoEConfig
from specmoe.engine.tracer import NullTracer

from specmoe.errors import SpecMoEError


class KVCache:
    """[batch, max_seq_len, kv_heads, head_dim] per layer for K and V, plus per-sequence lengths."""

    def __init__(
        self, cfg: MoEConfig, batch: int, seq_len: int, device: torch.device | str
    ) -> None:
        shape = (batch, seq_len, cfg.kv_heads, cfg.head_dim)
        dt = cfg.torch_dtype
        self.k = [torch.zeros(shape, dtype=dt, device=device) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape, dtype=dt, device=device) for _ in range(cfg.layers)]
        self.batch, self.seq_len = batch, seq_len
        self.lengths = torch.zeros(batch, dtype=torch.long)  # host copy: no device sync to read it

    def check(self, batch: int, longest: int) -> None:
        if batch > self.batch:
            raise SpecMoEError(
                f"batch={batch} is larger than the KV cache (max_batch={self.batch})"
            )
        if longest > self.seq_len:
            raise SpecMoEError(f"sequence length {longest} (prompt + max_new_tokens + 2·gamma + 1) "
                               f"exceeds the KV cache (max_seq_len={self.seq_len})")


class Transformer:
    def __init__(self, cfg: MoEConfig, dense: dict[str, torch.Tensor], experts,
                 device: torch.device | str = "cpu", tracer=None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.experts = experts
        self.tracer = tracer or NullTracer()
        dt = cfg.torch_dtype
        w = {k: v.to(device=self.device, dtype=dt) for k, v in dense.items()}
        if cfg.tie_embeddings:
            w["lm_head"] = w["embed"]
        for l in range(cfg.layers):
            p = f"layers.{l}."
            if cfg.shared_expert_ffn:
                w[p + "shared_w13"] = torch.cat((w.pop(p + "shared_w1"), w.pop(p + "shared_w3")))
        self.w = w
        self.gates = [w[f"layers.{l}.gate"] for l in range(cfg.layers)]
        self.cos, self.sin = _rope_tables(cfg, self.device)

    # ------------------------------------------------------------------ forward

    def forward(self, tokens: torch.Tensor, cache: KVCache, phase: str = "decode",
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] -> final-normed hidden states [B, T, hidden]."""
        B, T = tokens.shape
        pos = cache.lengths[:B, None] + torch.arange(T)                    # host
        if int(pos.max()) >= cache.seq_len:
            raise SpecMoEError(f"position {int(pos.max())} beyond max_seq_len={cache.seq_len}")
        span = int(pos.max()) + 1
        # staged through pinned memory: a pageable copy would first wait for the stream to drain
        pos_d = (pos.pin_memory() if self.device.type == "cuda" else pos).to(self.device,
                                                                             non_blocking=True)
        keep = None if valid is None else valid.flatten().nonzero().squeeze(1).to(self.device)
        return self.forward_at(tokens.to(self.device), pos_d, span, cache, phase, keep)

    def forward_at(self, tokens: torch.Tensor, pos_d: torch.Tensor, span: int, cache: KVCache,
                   phase: str, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The device part of forward: tokens [B, T] and positions pos_d [B, T] on the device,
        span an upper bound of max(pos) + 1 (the torch path's mask width). Reads nothing back,
        so it can be captured in a CUDA graph (graphs.DraftGraph)."""
        lens = pos_d[:, 0].contiguous()
        mask = (
            torch.arange(span, device=self.device)[None, None, None, :] <= pos_d[:, None, :, None]
        )
        cos, sin = self.cos[pos_d][:, :, None, :], self.sin[pos_d][:, :, None, :]
        h = self.w["embed"][tokens]
        for l in range(self.cfg.layers):
            h = h + self._attention(l, h, cache, pos_d, lens, span, mask, cos, sin, phase)
            h = h + self._moe(l, h, keep, phase)
        return ops.rms_norm(h, self.w["norm"], self.cfg.rms_eps)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = h @ self.w["lm_head"].t()
        return out if out.dtype == torch.float64 else out.float()

    # ------------------------------------------------------------------ blocks

    def _attention(self, l, h, cache, pos, lens, span, mask, cos, sin, phase) -> torch.Tensor:
        cfg, w, p = self.cfg, self.w, f"layers.{l}."
        tok = self.tracer.begin(name="attn")
        B, T, _ = h.shape
        q = self.qkv_into_cache(l, h, cache, pos, cos, sin)
        o = ops.cache_attention(q, cache.k[l][:B], cache.v[l][:B], lens, span, mask).reshape(
            B, T, -1
        )
        out = o @ w[p + "wo"].t()
        if self.tracer.enabled:
            self.tracer.end(tok, "attn", "attn", layer=l, phase=phase, tokens=B * T, context=span,
                            flops=4 * B * T * span * cfg.heads * cfg.head_dim, shape=[B, T, span])
        return out

    def qkv_into_cache(self, l, h, cache, pos, cos, sin) -> torch.Tensor:
        """Layer l's q, k, v projections (with qk-norm and RoPE); k and v written to the cache at
        positions `pos` [B, T]. Returns q [B, T, heads, head_dim]."""
        cfg, w, p = self.cfg, self.w, f"layers.{l}."
        B, T, _ = h.shape
        x = ops.rms_norm(h, w[p + "attn_norm"], cfg.rms_eps)
        q = _linear(x, w[p + "wq"], w.get(p + "bq")).view(B, T, cfg.heads, cfg.head_dim)
        k = _linear(x, w[p + "wk"], w.get(p + "bk")).view(B, T, cfg.kv_heads, cfg.head_dim)
        v = _linear(x, w[p + "wv"], w.get(p + "bv")).view(B, T, cfg.kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q = ops.rms_norm(q, w[p + "q_norm"], cfg.rms_eps)
            k = ops.rms_norm(k, w[p + "k_norm"], cfg.rms_eps)
        q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)
        rows = torch.arange(B, device=self.device)[:, None]
        cache.k[l][rows, pos] = k
        cache.v[l][rows, pos] = v
        return q

    def _moe(self, l, h, keep, phase) -> torch.Tensor:
        cfg, w, p = self.cfg, self.w, f"layers.{l}."
        B, T, H = h.shape
        x = ops.rms_norm(h, w[p + "mlp_norm"], cfg.rms_eps).reshape(B * T, H)
        xs = x if keep is None else x[keep]
        tok = self.tracer.begin(name="gate")
        weights, ids = ops.route(xs @ self.gates[l].t(), cfg.top_k, cfg.norm_topk_prob)
        self.tracer.end(tok, "gate", "gate", layer=l, phase=phase, tokens=xs.shape[0])
        tok = self.tracer.begin()  # composite: fetches, waits, host work
        y = self.experts.moe(l, xs, ids, weights, phase)
        if cfg.shared_expert_ffn:
            shared = ops.expert_ffn(xs, w[p + "shared_w13"], w[p + "shared_w2"])
            y = y + torch.sigmoid(xs @ w[p + "shared_gate"].t()) * shared
        self.tracer.end(tok, "moe", "moe", layer=l, phase=phase, tokens=xs.shape[0])
        if keep is not None:
            y = torch.zeros_like(x).index_copy_(0, keep, y)
        return y.view(B, T, H)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x @ w.t()
    return y if b is None else y + b


def _rope_tables(cfg: MoEConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_seq_len, head_dim], computed like Hugging Face (fp32 inverse frequencies)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    acc = torch.float64 if cfg.torch_dtype == torch.float64 else torch.float32
    freqs = torch.arange(cfg.max_seq_len, dtype=acc)[:, None] * inv.to(acc)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device, cfg.torch_dtype), emb.sin().to(device, cfg.torch_dtype)
