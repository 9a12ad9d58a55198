"""Speculative decoding: draft gamma tokens, verify gamma+1 positions at once,
keep the agreeing prefix.

Position bookkeeping (per sequence b): the cache holds L committed positions and one sampled token,
`pending`, is not in it yet. A round drafts d1..dg from pending, verifies [pending, d1..dg] at
positions L..L+g, accepts n of the drafts and adds one token t from the target (a correction where
drafting went wrong, a bonus when all g were accepted). The committed length becomes L+n+1 (the
rejected positions are rolled back by setting the length) and t is the new pending token.

Acceptance (Leviathan et al. 2023, Chen et al. 2023): temperature 0 accepts a draft token while it
equals the target's argmax; temperature > 0 accepts d with probability min(1, p(d)/q(d)), resamples
a rejection from norm(max(p - q, 0)) and draws the bonus from p, so every output token follows the
target's distribution exactly. `accept_synthetic` replaces the test by a coin with probability
alpha (timing at real shapes with random weights; its output is not the target's).
"""
from __future__ import annotations

import torch
from specmoe.engine.model import KVCache, Transformer


def probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def sample(logits: torch.Tensor, temperature: float, gen: torch.Generator | None) -> torch.Tensor:
    """[..., V] -> [...]: argmax at temperature 0, else a draw from softmax(logits / T)."""
    if temperature == 0:
        return logits.argmax(-1)
    p = probs(logits, temperature)
    flat = p.reshape(-1, p.shape[-1])
    return torch.multinomial(flat, 1, generator=gen).view(p.shape[:-1])


def _leading(ok: torch.Tensor) -> torch.Tensor:
    """Number of leading True per row."""
    return ok.to(torch.int64).cumprod(dim=1).sum(dim=1)


def accept_greedy(
    drafts: torch.Tensor, target_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """drafts [B, g], target_logits [B, g+1, V] -> (accepted n [B], next token [B])."""
    g = drafts.shape[1]
    best = target_logits.argmax(-1)
    n = _leading(drafts == best[:, :g])
    return n, best.gather(1, n[:, None]).squeeze(1)


def accept_sampling(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                    gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """drafts [B, g] drawn from q [B, g, V]; p [B, g+1, V] target probabilities -> (n, next)."""
    B, g = drafts.shape
    idx = drafts[..., None]
    pd = p[:, :g].gather(-1, idx).squeeze(-1)
    qd = q.gather(-1, idx).squeeze(-1)
    u = torch.rand(B, g, generator=gen, device=p.device, dtype=p.dtype)
    n = _leading(u * qd < pd)                        # u < min(1, p/q), q(d) > 0 since d ~ q
    resid = (p[:, :g] - q).clamp_min(0)
    mass = resid.sum(-1, keepdim=True)
    resid = torch.where(mass > 0, resid / mass.clamp_min(1e-30), p[:, :g])  # p == q: never rejects
    final = torch.cat((resid, p[:, g:]), dim=1)      # row n: residual after a rejection, else bonus
    row = final[torch.arange(B, device=p.device), n]
    return n, torch.multinomial(row, 1, generator=gen).squeeze(1)


def accept_synthetic(
    g: int,
    target_logits: torch.Tensor,
    alpha: float,
    coin: torch.Generator,
    temperature: float,
    gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept each draft with probability alpha (seeded coin); the next token is the target's."""
    B = target_logits.shape[0]
    n = _leading(torch.rand(B, g, generator=coin) < alpha).to(target_logits.device)
    rows = target_logits[torch.arange(B, device=n.device), n]
    return n, sample(rows, temperature, gen)


# ----------------------------------------------------------------------------- drafting, verifying


def draft_self(model: Transformer, cache: KVCache, pending: torch.Tensor, gamma: int,
               temperature: float, gen, step: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-drafting: the target itself in phase "draft" (its provider substitutes experts), writing
    draft K/V into the target's cache at L..L+g-1; verification overwrites them. -> (drafts, q)."""
    B = pending.shape[0]
    start = cache.lengths[:B].clone()
    drafts, qs, tok = [], [], pending
    for i in range(gamma):
        with model.tracer.span("draft_step", "draft_step", step=step, index=i, phase="draft",
                                tokens=B):
            logits = model.logits(model.forward(tok[:, None], cache, "draft")[:, -1])
            tok = sample(logits, temperature, gen)
        drafts.append(tok)
        if temperature > 0:
            qs.append(probs(logits, temperature))
        cache.lengths[:B] += 1
    cache.lengths[:B] = start
    return torch.stack(drafts, 1), (torch.stack(qs, 1) if qs else None)


def draft_separate(
    draft: Transformer,
    cache: KVCache,
    prev: torch.Tensor,
    pending: torch.Tensor,
    gamma: int,
    temperature: float,
    gen,
    step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A separate draft model with its own cache, kept at the target's committed length L. The first
    step feeds [prev, pending] at L-1, L: after a round that accepted all g drafts the draft model
    never saw the last one, and re-feeding position L-1 otherwise rewrites what is already there."""
    B = pending.shape[0]
    start = cache.lengths[:B].clone()
    cache.lengths[:B] = start - 1
    drafts, qs, toks = [], [], torch.stack((prev, pending), 1)
    for i in range(gamma):
        with draft.tracer.span("draft_step", "draft_step", step=step, index=i, phase="draft",
                                tokens=B):
            logits = draft.logits(draft.forward(toks, cache, "draft")[:, -1])
            tok = sample(logits, temperature, gen)
        cache.lengths[:B] += toks.shape[1]
        toks = tok[:, None]
        drafts.append(tok)
        if temperature > 0:
            qs.append(probs(logits, temperature))
    cache.lengths[:B] = start
    return torch.stack(drafts, 1), (torch.stack(qs, 1) if qs else None)


def verify(
    model: Transformer, cache: KVCache, pending: torch.Tensor, drafts: torch.Tensor
) -> torch.Tensor:
    """Target logits [B, g+1, V] for [pending, d1..dg] at positions L..L+g (causal among them)."""
    toks = torch.cat((pending[:, None], drafts), dim=1)
    return model.logits(model.forward(toks, cache, "verify"))
