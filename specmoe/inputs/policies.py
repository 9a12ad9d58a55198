"""The one policy vocabulary: names and parameters shared by analytic model, simulator, engine and CLI."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from specmoe.errors import SpecMoEError, suggest
from specmoe.inputs.tree import check_tree

# name -> (what moves, when; where it comes from). Order = how listings show them.
POLICIES: dict[str, str] = {
    "ondemand": "fetch each needed expert when its layer runs (MoE-OnDemand baseline)",
    "overlap": "prefetch the next layer's predicted experts during this layer (MoE-Overlap)",
    "caching": "pin the hottest fraction of experts resident, LRU for the rest (MoE-Caching)",
    "cpu": "compute a non-resident expert on the host CPU where cheaper than fetching (Fiddler)",
    "specmoe": "self-draft with N resident experts + substitution; verify fetching each expert once",
    "spmoe": "separate draft model whose gates predict experts; prefetch up to a cutoff layer",
    "moespec": "verification-time expert budget: drop low-weight experts of long-tail tokens",
    "fate": "cross-layer gate prediction, prefetch next layer, shallow-favouring cache",
    "eagle": "separate small draft model on the GPU; target experts fetched on demand",
}
SPECULATIVE = ("specmoe", "spmoe", "moespec", "eagle")
# Policies the analytic model covers; the simulator covers all of POLICIES.
ANALYTIC = ("ondemand", "overlap", "caching", "cpu", "specmoe", "spmoe", "moespec", "fate", "eagle")
# The planner's default candidates: every parameter they need has a measured or published value.
# The separate-draft policies (spmoe, moespec, eagle) need the user's draft model: its cost
# (draft_model_ratio) and its acceptance; fate needs a prediction hit rate. Ask for them by name.
PLANNED = ("ondemand", "overlap", "caching", "cpu", "specmoe")
DRAFT_SETS = ("random", "hot", "hottemporal")


@dataclass(frozen=True)
class Policy:
    """A policy and its parameters. Fields a policy does not use are ignored by it.

    gamma: draft tokens per verification (0 = no speculation).
    draft_experts: N experts per MoE layer resident for drafting (specmoe).
    draft_set: how the N are chosen: random, hot (most used overall), hottemporal (most used in
        the last verification, free because they were just fetched).
    substitution: route a draft token whose expert is not resident to the most similar resident one.
    spec_min_batch: speculation off below this batch size (specmoe).
    cache_fraction: fraction of experts per layer pinned resident (caching, fate); None = as many
        as fit in GPU memory.
    prefetch_hit_rate: share of the next layer's needed experts that were fetched ahead (overlap,
        spmoe, fate); the rest are fetched on demand. Default 1.0 = an oracle, not a measurement.
        Measured for the engine's overlap prediction on the tiny MoE (experiments/measure_prefetch.py,
        specmoe/data/tiny/prefetch.json): `workload.measured_prefetch_hit_rate("tiny", batch)`,
        CLI `--prefetch-hit-rate measured:tiny`.
    prefetch_precision: share of prefetched experts that were needed; wrong prefetches still cross
        the link (1.0 = none wasted; the tiny MoE's overlap prediction measured 0.79 at batch 1).
    expert_budget: experts per layer verified per step (moespec); None = no budget.
    cutoff_layer: last layer that spmoe prefetches for (None = all).
    draft_model_ratio: separate draft model's per-token cost as a fraction of the target's
        resident compute (spmoe, eagle).
    tree_width: draft-tree branching (speculative policies; 1 = a chain). Each branching node gets
        tree_width children drawn without replacement (Recursive Speculative Decoding, Jeon et al.
        2024, arXiv 2402.14160); gamma stays the tree's depth. See specmoe.inputs.tree.
    tree_levels: how many levels (from the root) branch; deeper levels extend every leaf by one
        token. None = every level (a full tree, RSD-C); 1 = tree_width chains from the root.
    """

    name: str = "ondemand"
    gamma: int = 0
    draft_experts: int = 0
    draft_set: str = "hottemporal"
    substitution: bool = True
    spec_min_batch: int = 1
    cache_fraction: float | None = None
    prefetch_hit_rate: float = 1.0
    prefetch_precision: float = 1.0
    expert_budget: int | None = None
    cutoff_layer: int | None = None
    draft_model_ratio: float = 0.05
    tree_width: int = 1
    tree_levels: int | None = None

    @property
    def speculative(self) -> bool:
        return self.name in SPECULATIVE and self.gamma > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> Policy:
        return replace(self, **changes)


def make_policy(name: str, **params: Any) -> Policy:
    """Validated Policy; unknown names and out-of-range parameters raise SpecMoEError."""
    key = name.strip().lower()
    if key not in POLICIES:
        raise SpecMoEError(f"policy={name!r} is unknown; allowed: {', '.join(POLICIES)}{suggest(key, POLICIES)}")
    p = Policy(name=key, **{k: v for k, v in params.items() if v is not None})
    validate_policy(p)
    return p


def validate_policy(p: Policy, num_experts: int | None = None, num_layers: int | None = None) -> None:
    if p.gamma < 0 or p.gamma > 64:
        raise SpecMoEError(f"gamma={p.gamma}: allowed 0..64 draft tokens per verification")
    if p.draft_experts < 0:
        raise SpecMoEError(f"draft_experts={p.draft_experts}: must be >= 0")
    if num_experts is not None and p.draft_experts > num_experts:
        raise SpecMoEError(f"draft_experts={p.draft_experts}: the model has only {num_experts} experts per layer")
    if p.name == "specmoe" and p.gamma > 0 and p.draft_experts < 1:
        raise SpecMoEError("draft_experts=0: specmoe drafts with at least 1 resident expert per layer")
    if p.draft_set not in DRAFT_SETS:
        raise SpecMoEError(f"draft_set={p.draft_set!r}: allowed {DRAFT_SETS}")
    if p.spec_min_batch < 1:
        raise SpecMoEError(f"spec_min_batch={p.spec_min_batch}: must be >= 1")
    if p.cache_fraction is not None and not 0.0 <= p.cache_fraction <= 1.0:
        raise SpecMoEError(f"cache_fraction={p.cache_fraction}: allowed [0, 1]")
    if not 0.0 <= p.prefetch_hit_rate <= 1.0:
        raise SpecMoEError(f"prefetch_hit_rate={p.prefetch_hit_rate}: allowed [0, 1]")
    if not 0.0 < p.prefetch_precision <= 1.0:
        raise SpecMoEError(f"prefetch_precision={p.prefetch_precision}: allowed (0, 1]")
    if p.expert_budget is not None and p.expert_budget < 1:
        raise SpecMoEError(f"expert_budget={p.expert_budget}: must be >= 1")
    if p.cutoff_layer is not None and (p.cutoff_layer < 0 or (num_layers and p.cutoff_layer > num_layers)):
        raise SpecMoEError(f"cutoff_layer={p.cutoff_layer}: allowed 0..{num_layers or 'num_layers'}")
    if not 0.0 < p.draft_model_ratio <= 1.0:
        raise SpecMoEError(f"draft_model_ratio={p.draft_model_ratio}: allowed (0, 1]")
    if not 1 <= p.tree_width <= 16:
        raise SpecMoEError(f"tree_width={p.tree_width}: allowed 1..16 children per draft-tree node")
    if p.tree_levels is not None and p.tree_levels < 0:
        raise SpecMoEError(f"tree_levels={p.tree_levels}: must be >= 0 (None = every level)")
    if p.tree_width > 1 and p.name not in SPECULATIVE:
        raise SpecMoEError(f"tree_width={p.tree_width}: policy {p.name!r} does not draft; draft trees "
                           f"need a speculative policy ({', '.join(SPECULATIVE)})")
    check_tree(p.gamma, p.tree_width, p.tree_levels)
