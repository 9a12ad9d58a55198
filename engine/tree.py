"""Tree drafts verified at once with recursive rejection sampling (Recursive Speculative Decoding,
Jeon et al. 2024, arXiv 2402.14160), for self-drafting (the target in phase "draft").

Tree (specmoe.inputs.tree): depth γ; nodes in breadth-first order, node 0 the pending token. The
first `tree_levels` levels branch `tree_width` ways, deeper levels extend every leaf by one.
Drafting expands one level per pass: the nodes of depth d run through the model and each draws
its children WITHOUT replacement from its draft distribution q (Gumbel-top-k; top-k at
temperature 0). Verification runs the target once over all 1 + S nodes.

Cache layout: node i of sequence b is written at slot L_b + i (L_b = committed length) with the
RoPE position L_b + depth(i); its attention mask admits the committed prefix and its ancestors
(a tree mask). After acceptance the accepted path's K/V move to slots L_b + 1 .. L_b + a, where a
chain would have put them (their RoPE positions already match), and the length advances by a + 1.

Acceptance, walking down from the root with the target's p at the current node:
- temperature 0: move to the child equal to argmax p, else emit argmax p. The output is the
  target's greedy output token for token.
- temperature > 0 (recursive rejection sampling): children x_1..x_k in their draw order;
  x_i ~ q_i = q without x_1..x_{i-1}, renormalised. Accept x_i with probability
  min(1, p(x_i) / q_i(x_i)); on rejection p ← norm(max(p − q_i, 0)) (the rejected token has
  p(x_i) < q_i(x_i), so the residual excludes it). If every child is rejected, emit a draw from the
  residual; at a leaf, a bonus draw from p. Each emitted token follows the target's p exactly.
Hooked into the engine by one line in generate._Run._round (policy.tree_width > 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from specmoe.engine import ops
from specmoe.engine.speculative import probs

from specmoe.errors import SpecMoEError


@dataclass(frozen=True)
class Tree:
    parent: tuple[int, ...]
    depth: tuple[int, ...]
    children: tuple[tuple[int, ...], ...]
    levels: tuple[tuple[int, ...], ...]      # node ids per depth
    ancestors: torch.Tensor                  # [N, N] bool: j on the path root..i (i included)

    @property
    def size(self) -> int:
        return len(self.parent)


def build_tree(gamma: int, width: int, levels: int | None = None) -> Tree:
    lv = gamma if levels is None else min(gamma, levels)
    parent, depth, by_level = [-1], [0], [[0]]
    for d in range(1, gamma + 1):
        branch = width if d <= lv else 1
        level = []
        for p in by_level[-1]:
            for _ in range(branch):
                parent.append(p)
                depth.append(d)
                level.append(len(parent) - 1)
        by_level.append(level)
    n = len(parent)
    children = [[] for _ in range(n)]
    for i in range(1, n):
        children[parent[i]].append(i)
    anc = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = parent[j]
    return Tree(
        tuple(parent), tuple(depth), tuple(map(tuple, children)), tuple(map(tuple, by_level)), anc
    )


# ----------------------------------------------------------------------------- the tree pass


def tree_forward(
    model, tokens: torch.Tensor, nodes: list[int], cache, tree: Tree, phase: str
) -> torch.Tensor:
    """Hidden states [B, n, hidden] of tree nodes `nodes` (tokens [B, n]) whose ancestors are in the
    cache already; writes their K/V at slots L + node."""
    B, n = tokens.shape
    dev = model.device
    base = cache.lengths[:B, None]
    idx = torch.tensor(nodes)
    slots = base + idx[None]
    span = int(slots.max()) + 1
    if span > cache.seq_len:
        raise SpecMoEError(
            f"draft tree reaches position {span - 1}, beyond max_seq_len={cache.seq_len}"
        )
    rope = (base + torch.tensor([tree.depth[i] for i in nodes])[None]).to(dev)
    key = torch.arange(span)[None, None, :] - base[:, :, None]                       # [B, 1, span]
    in_tree = (key >= 0) & (key < tree.size)
    anc = tree.ancestors[idx][None, :, :].expand(B, n, tree.size)                    # [B, n, N]
    tree_ok = torch.gather(anc, 2, key.clamp(0, tree.size - 1).expand(B, n, span))
    mask = ((key < 0) | (in_tree & tree_ok))[:, None].to(dev)  # [B, 1, n, span]
    cos, sin = model.cos[rope][:, :, None, :], model.sin[rope][:, :, None, :]
    slots = slots.to(dev)
    h = model.w["embed"][tokens.to(dev)]
    for l in range(model.cfg.layers):
        h = h + _attention(model, l, h, cache, slots, span, mask, cos, sin)
        h = h + model._moe(l, h, None, phase)
    return ops.rms_norm(h, model.w["norm"], model.cfg.rms_eps)


def _attention(model, l, h, cache, slots, span, mask, cos, sin) -> torch.Tensor:
    """The model's attention block with an explicit (tree) mask: always the masked torch path."""
    B, T, _ = h.shape
    q = model.qkv_into_cache(l, h, cache, slots, cos, sin)
    keys, vals = cache.k[l][:B, :span].transpose(1, 2), cache.v[l][:B, :span].transpose(1, 2)
    o = ops.attention_ref(q.transpose(1, 2), keys, vals, mask).transpose(1, 2).reshape(B, T, -1)
    return o @ model.w[f"layers.{l}.wo"].t()



# ------------------------------------------------------------------------- draft, verify, accept


def draft_tree(model, cache, pending: torch.Tensor, tree: Tree, temperature: float, gen):
    """Tokens [B, N] of the tree (node 0 = pending) and each branching node's draft q [B, V]."""
    B = pending.shape[0]
    toks = torch.zeros(B, tree.size, dtype=torch.long, device=pending.device)
    toks[:, 0] = pending
    qs: dict[int, torch.Tensor] = {}
    for level in tree.levels[:-1]:
        nodes = list(level)
        logits = model.logits(tree_forward(model, toks[:, nodes], nodes, cache, tree, "draft"))
        for j, node in enumerate(nodes):
            kids = tree.children[node]
            if temperature == 0:
                pick = logits[:, j].topk(len(kids), dim=-1).indices
            else:
                q = probs(logits[:, j], temperature)
                qs[node] = q
                gumbel = -torch.log(
                    -torch.log(
                        torch.rand(
                            q.shape, generator=gen, device=q.device, dtype=q.dtype
                        ).clamp_min(1e-30)
                    )
                )
                pick = (q.log() + gumbel).topk(len(kids), dim=-1).indices  # without replacement
            toks[:, list(kids)] = pick
    return toks, qs


def accept_tree(tree: Tree, toks: torch.Tensor, logits: torch.Tensor, qs: dict, temperature: float,
                gen) -> tuple[list[list[int]], list[int]]:
    """Per sequence: the accepted path (node ids below the root) and the next token."""
    paths, nxt = [], []
    for b in range(toks.shape[0]):
        node, path = 0, []
        p = probs(logits[b, 0], temperature) if temperature > 0 else None
        while True:
            kids = tree.children[node]
            if temperature == 0:
                best = int(logits[b, node].argmax())
                kid = next((c for c in kids if int(toks[b, c]) == best), None)
                if kid is None:
                    nxt.append(best)
                    break
            else:
                kid, p = _recursive_rejection(kids, toks[b], qs.get(node), p, gen, b)
                if kid is None:
                    nxt.append(int(torch.multinomial(p, 1, generator=gen)))
                    break
                p = probs(logits[b, kid], temperature)
            path.append(kid)
            node = kid
        paths.append(path)
    return paths, nxt


def _recursive_rejection(kids, toks_b, q, p, gen, b):
    """Try the children in draw order; -> (accepted child or None, target residual)."""
    if not kids:
        return None, p
    q = q[b].clone()
    for c in kids:
        x = int(toks_b[c])
        qi = q / q.sum()
        u = torch.rand((), generator=gen, device=p.device, dtype=p.dtype)
        if u * qi[x] < p[x]:
            return c, p
        resid = (p - qi).clamp_min(0)
        p = resid / resid.sum() if resid.sum() > 0 else p
        q[x] = 0.0                                     # the next child was drawn without x
    return None, p


def commit_paths(cache, B: int, paths: list[list[int]], active: list[bool]) -> None:
    """Move each accepted path's K/V to the chain slots L+1..L+a (node ids only grow along a path,
    so a slot is read before anything overwrites it)."""
    for b in range(B):
        if not active[b] or not paths[b]:
            continue
        base = int(cache.lengths[b])
        src = torch.tensor(paths[b]) + base
        dst = torch.arange(1, len(paths[b]) + 1) + base
        for l in range(len(cache.k)):
            cache.k[l][b, dst] = cache.k[l][b, src]
            cache.v[l][b, dst] = cache.v[l][b, src]


def tree_round(run) -> None:
    """One speculative round of generate._Run with a draft tree (policy.tree_width > 1)."""
    e, B, pol = run.e, run.B, run.e.policy
    if e.draft is not None or run.alpha is not None:
        raise SpecMoEError("tree_width > 1: draft trees run with self-drafting and real acceptance "
                           "(not with a separate draft model or synthetic_acceptance)")
    tree = build_tree(run.gamma, pol.tree_width, pol.tree_levels)
    active = [len(o) < run.max_new for o in run.out]
    run._phase("draft")
    toks, qs = draft_tree(e.model, e.cache, run.pending, tree, run.T, run.gen)
    run._phase("verify")
    with e.tracer.span("verify", "verify", step=run.step, phase="verify", tokens=B * tree.size):
        logits = e.model.logits(
            tree_forward(e.model, toks, list(range(tree.size)), e.cache, tree, "verify")
        )
    paths, nxt = accept_tree(tree, toks, logits, qs, run.T, run.gen)
    commit_paths(e.cache, B, paths, active)
    tok_lists = toks.tolist()
    n = [len(pth) for pth in paths]
    drafts = [[tok_lists[b][c] for c in paths[b]] + [0] * (run.gamma - n[b]) for b in range(B)]
    run._commit(n, nxt, drafts, active)
