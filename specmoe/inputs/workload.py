"""Workload: batch and lengths, a routing model (which experts tokens use) and an acceptance model.

Routing is described by per-layer expert inclusion probabilities p[l, e] (the chance that one token
uses expert e in layer l; Σ_e p = top_k). Expected distinct experts among n independent tokens:
    U(n) = Σ_e [1 − (1 − p_e)^n]          (uniform: E·(1 − (1 − k/E)^n))
Acceptance: i.i.d. per-token acceptance α gives expected tokens per verification
    τ(γ) = (1 − α^(γ+1)) / (1 − α)        (Leviathan et al. 2023)
or a measured table τ[γ] replaces it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import yaml

from specmoe.errors import SpecMoEError

ROUTING_KINDS = ("uniform", "zipf", "empirical")

# Mean accepted tokens per verification at γ = 10 published by SpecMoE (arXiv 2604.10152) for
# NLLB-MoE by draft-expert choice. α is solved from τ(10) so other γ follow the i.i.d. model.
PUBLISHED_TAU_GAMMA10 = {"random": 6.812, "hot": 7.220, "hottemporal": 7.265}


def tau(alpha, gamma):
    """Expected tokens per verification for i.i.d. acceptance α and draft length γ (vectorised)."""
    a = np.asarray(alpha, dtype=float)
    g = np.asarray(gamma, dtype=float)
    safe = np.where(np.isclose(a, 1.0), 0.5, a)
    closed = (1.0 - safe ** (g + 1.0)) / (1.0 - safe)
    return np.where(np.isclose(a, 1.0), g + 1.0, closed)


def alpha_from_tau(tau_value: float, gamma: int) -> float:
    """Invert τ(γ) for α by bisection (τ is increasing in α)."""
    if not 1.0 <= tau_value <= gamma + 1:
        raise SpecMoEError(f"tau={tau_value}: must lie in [1, gamma+1={gamma + 1}]")
    lo, hi = 0.0, 1.0 - 1e-12
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tau(mid, gamma) < tau_value else (lo, mid)
    return 0.5 * (lo + hi)


def _used(p: np.ndarray, n) -> np.ndarray:
    """1 − (1 − p_e)^n: the chance that n independent tokens use expert e, shape n.shape +
    p.shape."""
    logq = np.log1p(-np.clip(p, 0.0, 1.0 - 1e-15))
    return 1.0 - np.exp(np.multiply.outer(np.asarray(n, dtype=float), logq))


def expected_distinct(p: np.ndarray, n) -> np.ndarray:
    """U(n) = Σ_e [1 − (1 − p_e)^n] over the last axis of p, for each n (vectorised over n)."""
    return _used(p, n).sum(axis=-1)


def draft_coverage(probs: np.ndarray, n) -> np.ndarray:
    """Share of token-expert pairs the n most used experts of each layer serve (layer mean): the
    pairs a draft with n resident experts computes without substitution."""
    rows = np.sort(np.atleast_2d(probs), axis=1)[:, ::-1]
    cum = np.concatenate([np.zeros((len(rows), 1)), np.cumsum(rows, axis=1)], axis=1)
    share = cum / np.maximum(rows.sum(axis=1, keepdims=True), 1e-12)
    idx = np.clip(np.asarray(n, dtype=int), 0, rows.shape[1])
    return share.mean(axis=0)[idx]


class ExpertCounts:
    """Expected distinct and non-resident experts per layer, memoised over unique token counts."""

    def __init__(self, probs: np.ndarray):
        # Layers with the same sorted profile share one row, weighted by how many there are.
        rows, counts = np.unique(np.sort(probs, axis=1)[:, ::-1], axis=0, return_counts=True)
        self.probs, self.weights = rows, counts / counts.sum()
        self.num_experts = probs.shape[1]

    def _cum(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Layer-mean cumulative Σ_{e<j}[1 − (1 − p_e)^T] for j = 0..E, per unique T."""
        uniq, inverse = np.unique(tokens, return_inverse=True)
        used = _used(self.probs, uniq)                                       # [U, P, E]
        cum = np.concatenate([np.zeros(used.shape[:2] + (1,)), np.cumsum(used, axis=2)], axis=2)
        return np.einsum("upj,p->uj", cum, self.weights), inverse.reshape(tokens.shape)

    def distinct_by_profile(self, tokens) -> np.ndarray:
        """U(T) of each layer profile: [P, *T.shape] (rows of self.probs, weights self.weights)."""
        t = np.asarray(tokens, dtype=float)
        logq = np.log1p(-np.clip(self.probs, 0.0, 1.0 - 1e-15))            # [P, E]
        return (1.0 - np.exp(np.multiply.outer(t, logq))).sum(axis=-1).transpose(
            (t.ndim,) + tuple(range(t.ndim)))

    def top_mass(self, n) -> np.ndarray:
        """Layer-mean Σ of the n largest inclusion probabilities (tokens·mass: pairs they take)."""
        cum = np.concatenate(
            [np.zeros((len(self.probs), 1)), np.cumsum(self.probs, axis=1)], axis=1
        )
        idx = np.clip(np.asarray(n, dtype=int), 0, self.num_experts)
        return np.einsum("pj,p->j", cum, self.weights)[idx]

    def distinct_and_missing(self, tokens, resident, random_resident=False):
        """(U(T), NR(T, R)) for arrays T and R (resident experts per layer)."""
        tokens = np.asarray(tokens, dtype=float)
        resident = np.broadcast_to(np.asarray(resident), tokens.shape).astype(int)
        cum, idx = self._cum(tokens)
        distinct = cum[idx, -1]
        if random_resident:
            missing = distinct * (1.0 - resident / self.num_experts)
        else:
            missing = distinct - cum[idx, np.clip(resident, 0, self.num_experts)]
        return distinct, np.maximum(missing, 0.0)

    def missing_with_lru(self, tokens, resident, lru_slots: int, num_layers: int):
        """NR(T, R) per layer when `lru_slots` slots shared by all layers hold recently used
        experts (LRU, independent passes): Che's approximation. An unpinned expert needed with
        probability q per pass is still cached after t_C passes with probability 1 − (1 − q)^t_C,
        where the characteristic time t_C fills the cache: Σ [1 − (1 − q)^t_C] = lru_slots
        (Che, Tung, Wang 2002; Fricker, Robert, Roberts 2012 for the discrete-time form)."""
        tokens = np.asarray(tokens, dtype=float)
        resident = np.broadcast_to(np.asarray(resident), tokens.shape).astype(int)
        if lru_slots <= 0:
            return self.distinct_and_missing(tokens, resident)[1]
        pairs, inverse = np.unique(np.stack([tokens.ravel(), resident.ravel()]), axis=1,
                                   return_inverse=True)
        out = np.array([self._lru_missing(t, int(r), lru_slots, num_layers) for t, r in pairs.T])
        return out[inverse.ravel()].reshape(tokens.shape)

    def _lru_missing(self, tokens: float, resident: int, slots: int, num_layers: int) -> float:
        q = 1.0 - (1.0 - np.clip(self.probs[:, resident:], 0.0, 1.0)) ** tokens   # [P, E − R]
        w = self.weights[:, None] * num_layers                 # layers holding each profile
        def filled(t):
            return float((w * (1.0 - (1.0 - q) ** t)).sum())
        if filled(1e9) <= slots:                               # everything unpinned fits
            return 0.0
        lo, hi = 0.0, 1.0
        while filled(hi) < slots:
            hi *= 2.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if filled(mid) < slots else (lo, mid)
        return float((w * q * (1.0 - q) ** hi).sum()) / num_layers


def _water_fill(weights: np.ndarray, total: float) -> np.ndarray:
    """Scale weights to sum to `total` with every entry ≤ 1 (an expert is used at most once per
    token)."""
    w = np.asarray(weights, dtype=float)
    p = np.zeros_like(w)
    free = np.ones(w.shape, dtype=bool)
    remaining = total
    for _ in range(len(w)):
        if not free.any():
            break
        scaled = w * remaining / w[free].sum()
        capped = free & (scaled >= 1.0)
        if not capped.any():
            p[free] = scaled[free]
            break
        p[capped] = 1.0
        free &= ~capped
        remaining = total - p[~free].sum()
    return p


@dataclass(frozen=True)
class Routing:
    """How tokens choose experts. `probs` ([L, E], each row sums to top_k) for kind='empirical'.

    temporal_reuse: fraction of a step's experts reused at the next step beyond chance (0 = none);
    used by the simulator's routing sampler, and a source name says where a measured value came
    from.

    Expert steering (RICE, Wang et al. 2025, arXiv 2505.14681: reinforce two "cognitive experts"):
    boost_experts are ranks (0 = the most used) in each layer's profile whose routing weight is
    multiplied by boost_factor before top-k selection. ASSUMPTION: an expert's inclusion
    probability scales with its weight, p'_e ∝ boost·p_e, water-filled back to Σ = top_k with
    every p ≤ 1 (exact for a sampler that picks experts in proportion to their weights; if the
    boost only rescaled the mixing weights after selection, inclusion and every cost would stay).

    Adaptive computation (Duo-LLM, Alizadeh et al. 2024, arXiv 2410.10846): per MoE layer a share
    big_share of tokens takes the routed experts (the big module), small_share a resident small
    FFN of small_module_ratio × one expert's parameters, the rest skips the FFN. Shares are given
    per layer (cycled; empty = every token takes the experts). A token takes the experts at random
    with its layer's share, so the per-token inclusion probability is big_share·p_e and U(n),
    misses and hits follow from it unchanged.
    """

    kind: str = "uniform"
    zipf_s: float = 1.0
    probs: tuple | None = None
    temporal_reuse: float = 0.0
    source: str = ""
    resample: bool = False    # empirical probs may be mapped onto a model with another E (opt-in)
    boost_experts: tuple[int, ...] = ()
    boost_factor: float = 1.0
    big_share: tuple[float, ...] = ()
    small_share: tuple[float, ...] = ()
    small_module_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in ROUTING_KINDS:
            raise SpecMoEError(f"routing kind={self.kind!r}: allowed {ROUTING_KINDS}")
        if self.zipf_s < 0:
            raise SpecMoEError(f"zipf_s={self.zipf_s}: must be >= 0")
        if not 0.0 <= self.temporal_reuse <= 1.0:
            raise SpecMoEError(f"temporal_reuse={self.temporal_reuse}: allowed [0, 1]")
        if self.kind == "empirical" and self.probs is None:
            raise SpecMoEError(
                "routing kind='empirical' needs probs (per-layer inclusion probabilities)"
            )
        if not self.boost_factor > 0:
            raise SpecMoEError(f"boost_factor={self.boost_factor}: must be > 0 (1 = no steering)")
        if any(r < 0 for r in self.boost_experts):
            raise SpecMoEError(f"boost_experts={self.boost_experts}: ranks must be >= 0")
        for name in ("big_share", "small_share"):
            if any(not 0.0 <= v <= 1.0 for v in getattr(self, name)):
                raise SpecMoEError(f"{name}={getattr(self, name)}: every share must lie in [0, 1]")
        big, small = self.module_shares(max(len(self.big_share), len(self.small_share), 1))
        if np.any(big + small > 1.0 + 1e-12):
            raise SpecMoEError(
                f"big_share + small_share > 1 in some layer ({self.big_share}, {self.small_share})"
            )
        if not 0.0 <= self.small_module_ratio <= 1.0:
            raise SpecMoEError(
                f"small_module_ratio={self.small_module_ratio}: allowed [0, 1] (of one expert)"
            )

    @property
    def adaptive(self) -> bool:
        return bool(self.big_share or self.small_share)

    def module_shares(self, num_layers: int) -> tuple[np.ndarray, np.ndarray]:
        """(big, small) shares of tokens per MoE layer (Duo-LLM); (1, 0) when not adaptive."""
        def cycled(v, default):
            return (
                np.resize(np.asarray(v, dtype=float), num_layers)
                if v
                else np.full(num_layers, default)
            )
        big = cycled(self.big_share, 1.0 if not self.big_share and not self.small_share else 0.0)
        if self.small_share and not self.big_share:
            big = 1.0 - cycled(self.small_share, 0.0)
        return big, cycled(self.small_share, 0.0)

    def selection_probs(self, num_experts: int, top_k: int, num_layers: int) -> np.ndarray:
        """p[l, e] of a token that takes the routed experts (rows sum to top_k), sorted
        descending."""
        if self.kind == "uniform":
            rows = np.tile(np.full(num_experts, top_k / num_experts), (num_layers, 1))
        elif self.kind == "zipf":
            ranks = np.arange(1, num_experts + 1, dtype=float)
            rows = np.tile(_water_fill(ranks ** -self.zipf_s, top_k), (num_layers, 1))
        else:
            rows = _resample_empirical(
                np.asarray(self.probs, dtype=float), num_experts, top_k, num_layers
            )
        return self._boost(rows, top_k) if self.boost_experts and self.boost_factor != 1.0 else rows

    def _boost(self, rows: np.ndarray, top_k: int) -> np.ndarray:
        ranks = [r for r in self.boost_experts if r < rows.shape[1]]
        out = np.empty_like(rows)
        for layer, row in enumerate(rows):
            w = row.copy()
            w[ranks] *= self.boost_factor
            out[layer] = np.sort(_water_fill(w, top_k))[::-1]
        return out

    def inclusion_probs(self, num_experts: int, top_k: int, num_layers: int) -> np.ndarray:
        """p[l, e] per token (a token skipping layer l's experts uses none), sorted descending per
        layer (expert identity does not matter to the models). Rows sum to top_k·big_share[l]."""
        rows = self.selection_probs(num_experts, top_k, num_layers)
        return rows * self.module_shares(num_layers)[0][:, None] if self.adaptive else rows


def _resample_empirical(
    probs: np.ndarray, num_experts: int, top_k: int, num_layers: int
) -> np.ndarray:
    """Map measured per-layer probabilities onto another model's E, k and L by quantile shape.

    The sorted share profile is interpolated onto E points, then water-filled to sum to k; layers
    are cycled. Where E, k and L match, the measured values come back unchanged (sorted).
    """
    probs = np.sort(np.atleast_2d(probs), axis=1)[:, ::-1]
    out = np.empty((num_layers, num_experts))
    for layer in range(num_layers):
        src = probs[layer % len(probs)]
        if len(src) == num_experts and np.isclose(src.sum(), top_k):
            out[layer] = src
            continue
        share = src / src.sum()
        x_src = (np.arange(len(src)) + 0.5) / len(src)
        x_dst = (np.arange(num_experts) + 0.5) / num_experts
        out[layer] = _water_fill(np.interp(x_dst, x_src, share), top_k)
    return out


@dataclass(frozen=True)
class Acceptance:
    """Acceptance of draft tokens. Either i.i.d. α, or a measured τ per γ (table), optionally per N.

    `alpha_by_draft_experts` maps N → α where acceptance was measured per draft-expert count.
    """

    alpha: float = 0.0
    tau_table: tuple | None = None          # ((gamma, tau), ...)
    alpha_by_draft_experts: tuple | None = None   # ((N, alpha), ...)
    source: str = ""
    alpha_spread: float = 0.0               # standard deviation of α (feeds prediction intervals)

    def __post_init__(self):
        if not 0.0 <= self.alpha < 1.0:
            raise SpecMoEError(f"acceptance alpha={self.alpha}: allowed [0, 1)")
        if not 0.0 <= self.alpha_spread <= 0.5:
            raise SpecMoEError(f"acceptance alpha_spread={self.alpha_spread}: allowed [0, 0.5]")

    def alpha_for(self, draft_experts) -> np.ndarray:
        n = np.asarray(draft_experts, dtype=float)
        if not self.alpha_by_draft_experts:
            return np.full(n.shape, self.alpha)
        xs, ys = zip(*sorted(self.alpha_by_draft_experts))
        return np.interp(n, xs, ys)

    def tau(self, gamma, draft_experts=0) -> np.ndarray:
        """The one acceptance function: expected tokens per verification τ(γ, N) (vectorised).

        A measured τ table (per γ) wins; else i.i.d. α for the draft set this Acceptance was made
        for (α per N where measured per N)."""
        g = np.asarray(gamma)
        if self.tau_table:
            xs, ys = zip(*sorted(self.tau_table))
            return np.interp(g, (0, *xs), (1.0, *ys))
        return tau(self.alpha_for(draft_experts), g)

    def alpha_at(self, gamma: int, draft_experts: int = 0) -> float:
        """Per-token α consistent with τ(γ, N): what a sampler draws accepted tokens with."""
        if self.tau_table and gamma > 0:
            return alpha_from_tau(float(self.tau(gamma, draft_experts)), int(gamma))
        return float(self.alpha_for(draft_experts))


def published_acceptance(draft_set: str = "hottemporal") -> Acceptance:
    """α solved from SpecMoE's published τ at γ = 10 (NLLB-MoE translation; a high-acceptance
    task)."""
    if draft_set not in PUBLISHED_TAU_GAMMA10:
        raise SpecMoEError(f"draft_set={draft_set!r}: allowed {tuple(PUBLISHED_TAU_GAMMA10)}")
    a = alpha_from_tau(PUBLISHED_TAU_GAMMA10[draft_set], 10)
    return Acceptance(
        alpha=a,
        source=f"SpecMoE arXiv 2604.10152, NLLB-MoE, "
               f"tau(10)={PUBLISHED_TAU_GAMMA10[draft_set]} ({draft_set})",
    )


# ---- acceptance per model: published figures, else a stated prior -------------------------------

ALPHA_CAP = 0.999   # a draft never equals the target for certain (α < 1 keeps τ finite)


@cache
def published_acceptance_table() -> dict:
    """specmoe/data/acceptance_published.yaml: published figures per model and method, and the
    prior."""
    path = resources.files("specmoe") / "data" / "acceptance_published.yaml"
    return yaml.safe_load(path.read_text())


def _tiny_curve(draft_set: str) -> tuple[np.ndarray, np.ndarray]:
    """The measured tiny-MoE α against N/E for a draft set (specmoe/data/tiny/acceptance.json)."""
    per_n = _load_data_json("tiny", "acceptance.json")["alpha_by_draft_experts"][draft_set]
    n = np.array(sorted(int(k) for k in per_n), dtype=float)
    a = np.array([per_n[str(int(k))] for k in n])
    return n / n.max(), a


def shaped_alpha(alpha_ref: float, ref_fraction: float, fractions, draft_set: str) -> np.ndarray:
    """α at draft fractions N/E, through α_ref at ref_fraction, shaped like the tiny-model curve.

    The rejection rate 1 − α scales with the tiny curve's:
    1 − α(f) = (1 − α_ref)·(1 − s(f))/(1 − s(f_ref)),
    so α stays in [0, 1) and reaches the cap where all experts draft (the draft is the model)."""
    xs, ys = _tiny_curve(draft_set)
    s = np.interp(np.asarray(fractions, dtype=float), xs, ys)
    s_ref = float(np.interp(ref_fraction, xs, ys))
    return np.clip(1.0 - (1.0 - alpha_ref) * (1.0 - s) / max(1.0 - s_ref, 1e-9), 0.0, ALPHA_CAP)


def _entry_for(model_name: str) -> dict | None:
    entries = published_acceptance_table().get("entries", [])
    return next(
        (e for e in entries if e.get("model") == model_name and e.get("used_as_default")), None
    )


def default_acceptance(
    model_name: str, num_experts: int, draft_set: str = "hottemporal"
) -> Acceptance:
    """The model's default acceptance for self-drafting: its published figure where one exists
    (α solved from τ, shaped over N by the tiny-model curve), else the stated prior with its
    spread."""
    table = published_acceptance_table()
    entry = _entry_for(model_name)
    prior = table["prior"]
    if entry is not None:
        tau_v = entry["tau"][draft_set] if isinstance(entry["tau"], dict) else entry["tau"]
        a_ref = alpha_from_tau(float(tau_v), int(entry["gamma"]))
        ref_n, spread = int(entry.get("draft_experts", 1)), float(entry.get("alpha_spread", 0.0))
        source = (
            f"{entry['source']}: tau({entry['gamma']}) = {tau_v} ({draft_set}) -> alpha = "
            f"{a_ref:.3f} at N = {ref_n}; other N shaped by the tiny MoE's measured curve"
        )
    else:
        a_ref, spread = float(prior["alpha"]), float(prior["alpha_spread"])
        ref_n = max(1, round(prior["reference_draft_fraction"] * num_experts))
        source = f"{model_name}: {prior['source']}; other N shaped by the tiny MoE's measured curve"
    ns = np.arange(1, num_experts + 1)
    alphas = shaped_alpha(a_ref, ref_n / num_experts, ns / num_experts, draft_set)
    return Acceptance(alpha=float(alphas[ref_n - 1]), source=source, alpha_spread=spread,
                      alpha_by_draft_experts=tuple(zip(ns.tolist(), alphas.tolist(), strict=True)))


@dataclass(frozen=True)
class Workload:
    """What is served: batch of sequences, prompt and output lengths (tokens), routing,
    acceptance."""

    batch: int = 1
    prompt_len: int = 512
    output_len: int = 256
    routing: Routing = field(default_factory=Routing)
    acceptance: Acceptance = field(default_factory=lambda: published_acceptance("hottemporal"))
    gpu_memory_utilization: float = 0.9    # share of HBM a plan may fill (vLLM's default)

    def __post_init__(self):
        u = self.gpu_memory_utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0.0 < u <= 1.0:
            raise SpecMoEError(f"gpu_memory_utilization={u!r}: allowed (0, 1]")
        for name in ("batch", "prompt_len", "output_len"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise SpecMoEError(f"{name}={v!r}: must be a whole number >= 1")

    @property
    def mean_context(self) -> float:
        """Mean cached positions seen by a decode step: the prompt plus half the output."""
        return self.prompt_len + self.output_len / 2.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "prompt_len": self.prompt_len,
            "output_len": self.output_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "routing": {
                "kind": self.routing.kind,
                "zipf_s": self.routing.zipf_s,
                "boost_experts": list(self.routing.boost_experts),
                "boost_factor": self.routing.boost_factor,
                "big_share": list(self.routing.big_share),
                "small_share": list(self.routing.small_share),
                "small_module_ratio": self.routing.small_module_ratio,
                "temporal_reuse": self.routing.temporal_reuse,
                "source": self.routing.source,
            },
            "acceptance": {
                "alpha": self.acceptance.alpha,
                "source": self.acceptance.source,
                "tau_table": self.acceptance.tau_table,
            },
        }


# ---- measured data shipped with the package (specmoe/data/<name>/) ------------------------------

@cache
def _load_data_json(name: str, file: str) -> dict:
    path = resources.files("specmoe") / "data" / name / file
    if not path.is_file():
        raise SpecMoEError(f"measured data {name!r}: no {file} shipped under specmoe/data/{name}/")
    return json.loads(path.read_text())


DEFAULT_ROUTING_SOURCE = (
    "uniform: no published per-model expert-load histogram or reuse rate with numbers was found to "
    "attribute (Liang et al. 2025, arXiv 2505.16056, measure local routing consistency of 20 MoE "
    "models as SRP/SCH scores, not as inclusion probabilities); "
    "give --routing zipf:S or measured:NAME"
)


def default_routing(model_name: str) -> Routing:
    """A catalog model's default routing: uniform, with the reason stated (no attributable
    per-model router statistics yet; add them here with their source when there are)."""
    return Routing(source=f"{model_name}: {DEFAULT_ROUTING_SOURCE}")


def check_routing(routing: Routing, num_experts: int, model_name: str) -> None:
    """Refuse measured routing of another expert count unless resampling was asked for."""
    if routing.kind != "empirical" or routing.probs is None or routing.resample:
        return
    measured_e = len(routing.probs[0]) if routing.probs else 0
    if measured_e != num_experts:
        raise SpecMoEError(
            f"routing={routing.source or 'empirical'!r}: measured over {measured_e} experts per "
            f"layer, but {model_name} has {num_experts}; pass "
            f"'{routing.source or 'measured:NAME'}:resample' to map its sorted load profile onto "
            "this model explicitly"
        )


def measured_routing(name: str, resample: bool = False) -> Routing:
    """Routing measured on a real model, e.g. 'tiny' (specmoe/data/tiny/routing.json)."""
    d = _load_data_json(name, "routing.json")
    probs = d.get("inclusion_probs") or d.get("p")
    if probs is None:
        raise SpecMoEError(f"measured routing {name!r}: routing.json lacks 'inclusion_probs'")
    reuse = d.get("temporal_reuse_excess", 0.0)
    return Routing(kind="empirical", probs=tuple(map(tuple, probs)), temporal_reuse=float(reuse),
                   source=f"measured:{name}", resample=resample)


def measured_acceptance(name: str, draft_set: str = "hottemporal") -> Acceptance:
    """Acceptance measured on a real model: α per N (specmoe/data/<name>/acceptance.json)."""
    d = _load_data_json(name, "acceptance.json")
    try:
        per_n = d["alpha_by_draft_experts"][draft_set]
    except KeyError:
        raise SpecMoEError(
            f"measured acceptance {name!r}: no entry for draft_set={draft_set!r}"
        ) from None
    pairs = tuple(sorted((int(n), float(a)) for n, a in per_n.items()))
    return Acceptance(
        alpha=pairs[-1][1], alpha_by_draft_experts=pairs, source=f"measured:{name}:{draft_set}"
    )


def parse_acceptance(
    text: str | float | None, draft_set: str = "hottemporal", model=None
) -> Acceptance:
    """CLI form: a number α in [0, 1), 'model' (the model's default: published figure or stated
    prior; also what None means when a model is given), 'paper' (SpecMoE's NLLB-MoE τ, for every N),
    or 'measured:NAME'. `model`: a ModelSpec (name, num_experts) for the per-model default."""
    if text in (None, "model") and model is not None:
        return default_acceptance(model.name, model.num_experts, draft_set)
    if text == "model":
        raise SpecMoEError("acceptance='model': needs the model (give --model, or a number for α)")
    if text is None or text == "paper":
        return published_acceptance(draft_set)
    if isinstance(text, str) and text.startswith("measured:"):
        return measured_acceptance(text.split(":", 1)[1], draft_set)
    try:
        a = float(text)
    except ValueError:
        raise SpecMoEError(
            f"acceptance={text!r}: give α in [0, 1), 'model', 'paper' or 'measured:NAME'"
        ) from None
    return Acceptance(alpha=a, source="user")


def measured_prefetch_hit_rate(name: str, batch: int | None = None) -> float:
    """Overlap's next-layer prediction measured on a real model (specmoe/data/<name>/prefetch.json):
    the share of needed next-layer experts prefetched. batch=None: the file's primary value
    (batch 1, the per-token prediction); else the value of the largest measured batch <= batch
    (the smallest measured one below it): a larger batch unions more tokens' predictions, so this
    errs low."""
    d = _load_data_json(name, "prefetch.json")
    if batch is None:
        h = d.get("prefetch_hit_rate")
    else:
        measured = sorted(int(b) for b in d.get("by_batch", {}))
        if not measured:
            raise SpecMoEError(f"measured prefetch {name!r}: prefetch.json lacks 'by_batch'")
        b = max((m for m in measured if m <= batch), default=measured[0])
        h = d["by_batch"][str(b)].get("hit_rate")
    if not isinstance(h, (int, float)) or not 0.0 <= h <= 1.0:
        raise SpecMoEError(f"measured prefetch {name!r}: hit rate {h!r} is not a number in [0, 1]")
    return float(h)


def parse_prefetch_hit_rate(text: str | float | None, batch: int | None = None,
                            field: str = "prefetch_hit_rate") -> float | None:
    """CLI form: a number in [0, 1] or 'measured:NAME' (None stays None: the policy's default)."""
    if text is None:
        return None
    if isinstance(text, str) and text.startswith("measured:"):
        try:
            return measured_prefetch_hit_rate(text.split(":", 1)[1], batch)
        except SpecMoEError as exc:
            raise SpecMoEError(f"{field}={text!r}: {exc}") from None
    try:
        h = float(text)
    except ValueError:
        raise SpecMoEError(
            f"{field}={text!r}: give a number in [0, 1] or 'measured:NAME'"
        ) from None
    if not 0.0 <= h <= 1.0:
        raise SpecMoEError(f"{field}={text!r}: allowed [0, 1] or 'measured:NAME'")
    return h


def parse_routing(text: str | None) -> Routing:
    """CLI form: 'uniform', 'zipf:S', 'measured:NAME' (refused for a model with another expert
    count) or 'measured:NAME:resample' (mapped onto the model's experts by quantile shape), then
    optional modifiers joined by '+':
    'rice:R1,R2@F' (boost the experts of ranks R1, R2 by F: RICE) and 'duo:BIG/SMALL@RATIO'
    (Duo-LLM shares, the same in every layer, small module RATIO × one expert)."""
    base, *mods = (text or "uniform").split("+")
    routing = _parse_base_routing(base.strip(), text)
    changes: dict[str, Any] = {}
    for mod in mods:
        kind, _, arg = mod.strip().partition(":")
        try:
            if kind == "rice":
                ranks, factor = arg.split("@")
                changes.update(boost_experts=tuple(int(r) for r in ranks.split(",")),
                               boost_factor=float(factor))
            elif kind == "duo":
                shares, ratio = arg.split("@")
                big, small = shares.split("/")
                changes.update(big_share=(float(big),), small_share=(float(small),),
                               small_module_ratio=float(ratio))
            else:
                raise ValueError
        except ValueError:
            raise SpecMoEError(f"routing={text!r}: modifier {mod!r}: allowed 'rice:R1,R2@FACTOR' "
                               "or 'duo:BIG/SMALL@RATIO' (e.g. zipf:1.0+rice:0,1@4)") from None
    return replace(routing, **changes) if changes else routing


def _parse_base_routing(base: str, text: str | None) -> Routing:
    if base == "uniform":
        return Routing()
    if base.startswith("zipf"):
        s = base.split(":", 1)[1] if ":" in base else "1.0"
        try:
            return Routing(kind="zipf", zipf_s=float(s))
        except ValueError:
            raise SpecMoEError(
                f"routing={text!r}: zipf exponent must be a number (e.g. zipf:1.2)"
            ) from None
    if base.startswith("measured:"):
        _, name, opt = (base.split(":", 2) + [""])[:3]
        if opt not in ("", "resample"):
            raise SpecMoEError(
                f"routing={text!r}: allowed 'measured:NAME' or 'measured:NAME:resample'"
            )
        return measured_routing(name, resample=opt == "resample")
    raise SpecMoEError(f"routing={text!r}: allowed 'uniform', 'zipf:S', 'measured:NAME[:resample]' "
                       "(+ modifiers)")

