"""Draft trees (Recursive Speculative Decoding, Jeon et al. 2024, arXiv 2402.14160): shape and
expected accepted length, vectorised over α and depth γ.

Shape: depth γ; the first `levels` levels branch `width` ways (every node there gets `width`
children drawn without replacement from the draft's distribution at that node: Gumbel-top-k),
deeper levels extend every leaf by one token. Nodes at depth d:
    n_0 = 1 (the pending token),  n_d = width^min(d, levels)
and the tree has S = Σ_{d=1..γ} n_d draft tokens; verification runs the target over 1 + S
positions per sequence under a tree attention mask (each node sees its ancestors only).
width = 1 is the chain of ordinary speculative decoding; levels = γ is RSD-C's constant
branching; levels = 1 gives `width` independent-looking chains from the root (a linear-size tree,
the budget class of RSD-S's beam of width `width`).

Acceptance: the target walks the tree from the root; at each node recursive rejection sampling
(RSD §3) tries the node's children in turn and accepts at most one. With per-candidate acceptance α
(the chain's per-token acceptance) and the ASSUMPTION that the candidates' acceptance events are
independent, a node with b children passes to the next level with probability
    β(b) = 1 − (1 − α)^b
so the expected accepted draft tokens are E[A] = Σ_{d=1..γ} Π_{j=1..d} β(b_j) and the tokens per
verification τ = 1 + E[A]. For b = 1 this is the chain's τ(γ) = (1 − α^{γ+1}) / (1 − α) (Leviathan
et al. 2023). The independence is an approximation: candidates drawn without replacement from the
same q are negatively dependent on the target's choice, so the true gain of the k-th candidate can
be smaller (when q is sharp and already right) or larger (RRS accepts from the residual, which
excludes the rejected token); the engine's tree drafts measure it (specmoe.engine.tree).
"""
from __future__ import annotations

import numpy as np

from specmoe.errors import SpecMoEError

MAX_TREE_NODES = 4096     # draft tokens per sequence; beyond it a verify pass is a prefill


def _levels(gamma, levels):
    g = np.asarray(gamma, dtype=float)
    return g if levels is None else np.minimum(g, float(levels))


def nodes_at(depth, width: int, levels: int | None):
    """Nodes at depth d (d = 0 is the root) of the tree; vectorised over depth."""
    d = np.asarray(depth, dtype=float)
    m = d if levels is None else np.minimum(d, float(levels))
    return np.power(float(width), m)


def tree_size(gamma, width: int, levels: int | None = None):
    """Draft tokens per sequence S = Σ_{d=1..γ} n_d (vectorised over γ)."""
    g = np.asarray(gamma, dtype=float)
    m = _levels(g, levels)
    w = float(width)
    branching = m if w == 1.0 else w * (np.power(w, m) - 1.0) / (w - 1.0)
    return branching + (g - m) * np.power(w, m)


def level_pass(alpha, width: int):
    """β(b) = 1 − (1 − α)^b: a node with b candidates passes one on (independence assumption)."""
    return 1.0 - np.power(1.0 - np.asarray(alpha, dtype=float), width)


def _geometric(x, n):
    """Σ_{d=1..n} x^d (vectorised; x = 1 gives n)."""
    x = np.asarray(x, dtype=float)
    n = np.asarray(n, dtype=float)
    safe = np.where(np.isclose(x, 1.0), 0.5, x)
    closed = safe * (1.0 - np.power(safe, n)) / (1.0 - safe)
    return np.where(np.isclose(x, 1.0), n, closed)


def tree_tau(alpha, gamma, width: int = 1, levels: int | None = None):
    """Expected tokens per verification τ = 1 + Σ_d Π_{j≤d} β_j for the tree (vectorised)."""
    a = np.asarray(alpha, dtype=float)
    g = np.asarray(gamma, dtype=float)
    m = _levels(g, levels)
    beta = level_pass(a, width)
    return 1.0 + _geometric(beta, m) + np.power(beta, m) * _geometric(a, g - m)


def level_probs(alpha: float, gamma: int, width: int = 1, levels: int | None = None) -> np.ndarray:
    """Per-level pass probabilities β_1..β_γ (what a sampler draws the accepted depth from)."""
    lv = gamma if levels is None else min(gamma, levels)
    return np.array([float(level_pass(alpha, width))] * lv + [float(alpha)] * (gamma - lv))


def check_tree(gamma: int, width: int, levels: int | None) -> None:
    size = float(tree_size(gamma, width, levels))
    if size > MAX_TREE_NODES:
        raise SpecMoEError(
            f"tree_width={width}, tree_levels={levels}, gamma={gamma}: {size:.0f} draft "
            f"tokens per sequence; allowed <= {MAX_TREE_NODES} (lower tree_levels or gamma)"
        )
