"""Top-k router gating: logits [T, E] -> (weights [T, k] fp32, ids [T, k] int32), best first.

Model conventions (Hugging Face config names):
    Mixtral, Qwen3-MoE (norm_topk_prob=True)    scoring="softmax", renormalize=True
    Qwen1.5/2-MoE (norm_topk_prob=False)        scoring="softmax", renormalize=False
    DeepSeek-V2 (softmax, routed_scaling_factor) scoring="softmax", renormalize=norm_topk_prob,
                                                 routed_scaling_factor=cfg value
    DeepSeek-V3 (sigmoid, bias-corrected choice) scoring="sigmoid", correction_bias=
                                                 e_score_correction_bias, renormalize=True,
                                                 routed_scaling_factor=cfg value
Selection is plain top-k over all experts: DeepSeek's group-limited routing (n_group/topk_group,
pick groups first, then experts inside them) is not implemented, so for those models the chosen
experts can differ from the reference model's where a group would have been excluded.
With a correction_bias the experts are chosen by score + bias while the weights use the score
alone (DeepSeek-V3's aux-loss-free balancing). Weights are multiplied by routed_scaling_factor
after the optional renormalisation. All math in fp32, whatever the logits dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _runtime as rt

SCORINGS = ("softmax", "sigmoid")


@triton.jit
def _gating_kernel(x_ptr, bias_ptr, w_ptr, id_ptr, T, E, stride_t, scale,
                   TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                   BLOCK_K: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr,
                   RENORM: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    rmask = rows < T
    cmask = cols < E
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_t + cols[None, :],
                mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    if SIGMOID:
        score = tl.sigmoid(x)
    else:
        x = tl.where(cmask[None, :], x, -float("inf"))
        ex = tl.exp(x - tl.max(x, axis=1)[:, None])
        score = ex / tl.sum(ex, axis=1)[:, None]
    choice = score
    if HAS_BIAS:
        choice = score + tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    choice = tl.where(cmask[None, :], choice, -float("inf"))

    kcols = tl.arange(0, BLOCK_K)
    weights = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    ids = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32)
    for i in tl.static_range(TOP_K):
        best = tl.argmax(choice, axis=1)  # first index among ties
        hit = cols[None, :] == best[:, None]
        w = tl.sum(tl.where(hit, score, 0.0), axis=1)
        weights = tl.where(kcols[None, :] == i, w[:, None], weights)
        ids = tl.where(kcols[None, :] == i, best[:, None].to(tl.int32), ids)
        choice = tl.where(hit, -float("inf"), choice)
    if RENORM:
        weights = weights / tl.sum(weights, axis=1)[:, None]
    weights = weights * scale
    out = rows[:, None] * TOP_K + kcols[None, :]
    omask = rmask[:, None] & (kcols[None, :] < TOP_K)
    tl.store(w_ptr + out, weights, mask=omask)
    tl.store(id_ptr + out, ids, mask=omask)


def _validate(logits, top_k, scoring, routed_scaling_factor, correction_bias):
    rt.check_tensor("logits", logits)
    rt.check_dtype("logits", logits, rt.FLOAT_DTYPES)
    if logits.dim() != 2:
        raise rt.SpecMoEError(f"logits.shape: got {list(logits.shape)}; allowed: [T, E]")
    E = logits.shape[1]
    if E < 1:
        raise rt.SpecMoEError("logits.shape[1] (experts): got 0; allowed: >= 1")
    rt.check_int("top_k", top_k, 1)
    if top_k > E:
        raise rt.SpecMoEError(f"top_k: got {top_k}; allowed: 1..{E} (the number of experts, "
                              "logits.shape[1])")
    if scoring not in SCORINGS:
        raise rt.SpecMoEError(f"scoring: got {scoring!r}; allowed: {', '.join(SCORINGS)}")
    rt.check_positive_float("routed_scaling_factor", routed_scaling_factor)
    rt.check_last_dim_contiguous("logits", logits)
    if correction_bias is not None:
        rt.check_tensor("correction_bias", correction_bias)
        rt.check_dtype("correction_bias", correction_bias, rt.FLOAT_DTYPES)
        rt.check_shape("correction_bias", correction_bias, (E,))
        rt.check_contiguous("correction_bias", correction_bias)


def topk_gating(logits: torch.Tensor, top_k: int, *, scoring: str = "softmax",
                renormalize: bool = True, routed_scaling_factor: float = 1.0,
                correction_bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32 [T, top_k], ids int32 [T, top_k]), highest choice first; see module doc."""
    _validate(logits, top_k, scoring, routed_scaling_factor, correction_bias)
    rt.check_devices(logits=logits, correction_bias=correction_bias)
    T, E = logits.shape
    weights = torch.empty(T, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(T, top_k, dtype=torch.int32, device=logits.device)
    if T == 0:
        return weights, ids
    block_e = max(16, rt.next_pow2(E))
    block_t = max(1, min(16, 4096 // block_e))
    bias = correction_bias if correction_bias is not None else logits  # unused pointer
    rt.launch(_gating_kernel, (triton.cdiv(T, block_t),),
              logits, bias, weights, ids, T, E, logits.stride(0), float(routed_scaling_factor),
              TOP_K=top_k, BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=rt.next_pow2(top_k),
              SIGMOID=scoring == "sigmoid", HAS_BIAS=correction_bias is not None,
              RENORM=bool(renormalize))
    return weights, ids


def topk_gating_reference(logits: torch.Tensor, top_k: int, *, scoring: str = "softmax",
                          renormalize: bool = True, routed_scaling_factor: float = 1.0,
                          correction_bias: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, as in the Hugging Face Mixtral/Qwen-MoE/DeepSeek routers (ungrouped)."""
    _validate(logits, top_k, scoring, routed_scaling_factor, correction_bias)
    x = logits.float()
    score = torch.sigmoid(x) if scoring == "sigmoid" else torch.softmax(x, dim=-1)
    choice = score if correction_bias is None else score + correction_bias.float()
    ids = torch.topk(choice, top_k, dim=-1, sorted=True).indices
    weights = score.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * routed_scaling_factor, ids.to(torch.int32)
