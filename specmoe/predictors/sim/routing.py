"""Sampled routing and acceptance: which experts each token uses, and how many drafts survive.

Routing is sampled per token with exact inclusion probabilities p[l, e] (Σ_e p = top_k, p ≤ 1):
random-order systematic sampling. For one random order of the experts, lay them on [0, k) with
lengths p_e and pick the experts under u, u+1, ..., u+k−1 for u ~ U(0, 1); each expert is picked
with probability exactly p_e and never twice. Over u, one order yields at most E distinct k-sets
("patterns"), so the whole design for a layer is a finite list of patterns with weights, built once
from `orders` random orders, and a token draws its pattern in O(1) with Walker's alias method.
Gumbel-top-k on log p would be cheaper to write but does not keep the inclusion probabilities.

Temporal reuse: with probability `temporal_reuse` a token keeps the previous token's pattern of the
same sequence at that layer (a draft or verified position reuses the one before it). A fresh
draw happens otherwise, so the marginal stays p at every step.

Prefill has too many tokens for per-token draws and no later reuse of them: it draws how many
tokens take each pattern from a multinomial (the same distribution, aggregated).
"""
from __future__ import annotations

import numpy as np


def _alias(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table: (probability of keeping slot i, alias of slot i)."""
    n = len(weights)
    scaled = weights * (n / weights.sum())
    keep = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        keep[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return keep, alias


def _patterns(
    p: np.ndarray, k: int, orders: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """k-sets of experts and their probabilities from `orders` random-order systematic designs."""
    E = len(p)
    pats = np.tile(np.arange(k), (orders * E, 1))
    weights = np.zeros(orders * E)
    for r in range(orders):
        order = rng.permutation(E)
        cum = np.concatenate([[0.0], np.cumsum(p[order])])
        cum *= k / cum[-1]
        cum[-1] = k
        breaks = np.unique(np.concatenate([[0.0, 1.0], np.mod(cum[:-1], 1.0)]))
        lens = np.diff(breaks)
        ok = lens > 1e-12                           # float noise makes empty slivers: drop them
        mids, lens = (breaks[:-1] + breaks[1:])[ok] / 2, lens[ok]
        pos = np.searchsorted(cum, mids[:, None] + np.arange(k), side="right") - 1
        pats[r * E: r * E + len(mids)] = order[np.clip(pos, 0, E - 1)]
        weights[r * E: r * E + len(mids)] = lens / orders
    return pats, weights


class RoutingSampler:
    """Per-token expert choice for `slots` sequences over MoE layers, seeded and vectorised.

    probs: [L, E] inclusion probabilities (rows sum to top_k). State: the last pattern each
    sequence slot used per layer (for temporal reuse).
    """

    def __init__(self, probs: np.ndarray, top_k: int, temporal_reuse: float, slots: int,
                 rng: np.random.Generator, orders: int = 32, big_share: np.ndarray | None = None):
        # big_share[l]: chance that a token takes layer l's experts at all (Duo-LLM); None = 1.
        self.big = None if big_share is None else np.asarray(big_share, dtype=float)
        probs = np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)
        self.L, self.E = probs.shape
        self.k, self.reuse, self.rng = top_k, float(temporal_reuse), rng
        rows, layer_table = np.unique(probs, axis=0, return_inverse=True)
        self.K = orders * self.E                     # patterns per table (zero-weight padding)
        pats, keep, alias, weights = [], [], [], []
        for t, row in enumerate(rows):
            pt, w = _patterns(row, top_k, orders, rng)
            kp, al = _alias(w)
            pats.append(pt), keep.append(kp), alias.append(al + t * self.K), weights.append(w)
        self.patterns = np.concatenate(pats)         # [T*K, k] expert ids of each pattern
        self.keep = np.concatenate(keep)
        self.alias = np.concatenate(alias)
        self.weights = np.stack(weights)             # [T, K]
        self.layer_table = np.asarray(layer_table).reshape(-1)
        self.base = (self.layer_table * self.K)[:, None]
        self.state = self._fresh((self.L, slots))

    # ---- draws ----------------------------------------------------------------------------------
    def _fresh(self, shape: tuple) -> np.ndarray:
        """Pattern ids (rows of self.patterns) for shape [L, ...], one alias draw per token."""
        x = self.rng.random(shape) * self.K
        i = x.astype(np.int64)
        flat = self.base.reshape((self.L,) + (1,) * (len(shape) - 1)) + i
        return np.where(x - i < self.keep[flat], flat, self.alias[flat])

    def reset(self, slots) -> None:
        """New sequences in `slots`: their last routing is a fresh draw (the prompt's last
        token)."""
        slots = np.asarray(slots)
        if slots.size:
            self.state[:, slots] = self._fresh((self.L, slots.size))

    def sample(self, slots: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
        """Route `positions` consecutive tokens of each sequence in `slots`.

        Returns (counts [L, positions, E] tokens per expert, patterns [L, B, positions]).
        """
        B, P = len(slots), positions
        pats = self._fresh((self.L, B, P))
        if self.reuse > 0.0:
            keep = self.rng.random((self.L, B, P)) < self.reuse
            chain = np.concatenate([self.state[:, slots, None], pats], axis=2)     # [L, B, P+1]
            src = np.maximum.accumulate(np.where(keep, 0, np.arange(1, P + 1)), axis=2)
            pats = np.take_along_axis(chain, src, axis=2)
        ids = self.patterns[pats]  # [L, B, P, k]
        key = (
            np.arange(self.L)[:, None, None, None] * P + np.arange(P)[None, None, :, None]
        ) * self.E
        weights = None
        if self.big is not None:                     # tokens that skip the experts count for none
            takes = self.rng.random((self.L, B, P)) < self.big[:, None, None]
            weights = np.broadcast_to(takes[..., None], ids.shape).ravel().astype(float)
        counts = np.bincount((ids + key).ravel(), weights=weights, minlength=self.L * P * self.E)
        counts = counts.astype(np.int64) if weights is not None else counts
        return counts.reshape(self.L, P, self.E), pats

    def commit(self, slots: np.ndarray, pats: np.ndarray, last: np.ndarray) -> None:
        """Remember each sequence's pattern at its last kept position (`last`, per sequence)."""
        self.state[:, slots] = pats[:, np.arange(len(slots)), last]

    def aggregate(self, tokens: int) -> np.ndarray:
        """Tokens per expert [L, E] for `tokens` independent tokens per layer (prefill)."""
        taking = tokens if self.big is None else self.rng.binomial(tokens, self.big)  # per layer
        n = self.rng.multinomial(taking, self.weights[self.layer_table])            # [L, K]
        ids = self.patterns.reshape(-1, self.K, self.k)[self.layer_table]           # [L, K, k]
        key = np.arange(self.L)[:, None, None] * self.E + ids
        w = np.broadcast_to(n[:, :, None], ids.shape)
        return np.bincount(key.ravel(), weights=w.ravel(), minlength=self.L * self.E).reshape(
            self.L, self.E
        )


def sample_accepted(rng: np.random.Generator, alpha: float, gamma: int, n: int) -> np.ndarray:
    """Draft tokens accepted per sequence: each accepted with probability α until the first
    rejection."""
    if gamma <= 0:
        return np.zeros(n, dtype=np.int64)
    return np.minimum(rng.geometric(1.0 - alpha, size=n) - 1, gamma)


def tree_layout(gamma: int, width: int = 1, levels: int | None = None) -> np.ndarray:
    """Positions of a draft tree per sequence, level by level: offsets[d] is the first position of
    depth d (d = 0 the pending token), offsets[γ+1] the total 1 + S (specmoe.inputs.tree)."""
    lv = gamma if levels is None else min(gamma, levels)
    nodes = [width ** min(d, lv) for d in range(gamma + 1)]
    return np.concatenate([[0], np.cumsum(nodes)]).astype(np.int64)


def sample_accepted_levels(rng: np.random.Generator, level_pass: np.ndarray, n: int) -> np.ndarray:
    """Accepted depth per sequence when level d is passed with probability level_pass[d−1], until
    the first level that fails (a draft tree under recursive rejection sampling)."""
    if len(level_pass) == 0:
        return np.zeros(n, dtype=np.int64)
    ok = rng.random((n, len(level_pass))) < np.asarray(level_pass)[None, :]
    return np.cumprod(ok, axis=1).sum(axis=1).astype(np.int64)
