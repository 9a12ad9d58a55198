"""The policy registry: every policy's name and every parameter's default, range, help and users,
declared once. CLI flags (app.cli.flags), sweep axes (planning.sweep), the planner's pass-through
parameters and validation are generated from it; each predictor and the engine declare which of
these policies they implement (tests/test_registry.py holds them to it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from specmoe.errors import SpecMoEError, suggest
from specmoe.inputs.tree import check_tree

# name -> (what moves, when; where it comes from). Order = how listings show them.
POLICIES: dict[str, str] = {
    "ondemand": "fetch each needed expert when its layer runs (MoE-OnDemand baseline)",
    "overlap": "prefetch the next layer's predicted experts during this layer (MoE-Overlap)",
    "caching": "pin the hottest fraction of experts resident, LRU for the rest (MoE-Caching)",
    "cpu": "compute a non-resident expert on the host CPU where cheaper than fetching (Fiddler)",
    "specmoe": "self-draft with N resident experts + substitution; "
               "verify fetching each expert once",
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
# Policies that prefetch the next layer while this one runs: their staging is double-buffered.
DOUBLE_BUFFERED = ("overlap", "fate")
# Policies that keep recently used experts in Policy.lru_slots.
LRU_POLICIES = ("caching", "fate")


@dataclass(frozen=True)
class Param:
    """One policy parameter: its kind, range and help. `optional`: None means "decided for you"."""

    help: str
    used_by: tuple[str, ...]
    kind: str = "float"                 # int | float | bool | choice
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False               # (lo, hi] instead of [lo, hi]
    choices: tuple[str, ...] = ()
    optional: bool = False

    def allowed(self) -> str:
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        rng = f"{'(' if self.lo_open else '['}{lo}, {hi}]"
        return (f"whole numbers in {rng}" if self.kind == "int" else rng) + (
            " or none" if self.optional else ""
        )


def _p(default, **meta):
    return field(default=default, metadata={"param": Param(**meta)})


@dataclass(frozen=True)
class Policy:
    """A policy and its parameters (see PARAMS for each one's range and help). Fields a policy
    does not use are ignored by it. prefetch_hit_rate's default 1.0 is an oracle, not a
    measurement: the tiny MoE's overlap prediction measured 0.794 at batch 1 (`measured:tiny`)."""

    name: str = "ondemand"
    gamma: int = _p(0, kind="int", lo=0, hi=64, used_by=SPECULATIVE,
                    help="draft tokens per verification (0 = no speculation)")
    draft_experts: int = _p(0, kind="int", lo=0, used_by=("specmoe",),
                            help="N experts per MoE layer kept resident for drafting")
    draft_set: str = _p("hottemporal", kind="choice", choices=DRAFT_SETS, used_by=SPECULATIVE,
                        help="how the N draft experts are chosen: random, hot (most used overall), "
                             "hottemporal (most used in the last verification)")
    substitution: bool = _p(True, kind="bool", used_by=("specmoe",),
                            help="route a draft token whose expert is not resident to the most "
                                 "similar resident one")
    spec_min_batch: int = _p(1, kind="int", lo=1, used_by=SPECULATIVE,
                             help="speculation off below this batch size")
    resident_experts: int | None = _p(None, kind="int", lo=0, optional=True,
                                      used_by=("caching", "cpu", "fate"),
                                      help="hottest experts per MoE layer kept resident (pinned) "
                                           "(none: as many as fit in GPU memory)")
    lru_slots: int = _p(0, kind="int", lo=0, used_by=("caching", "fate"),
                        help="expert slots shared by all MoE layers beyond the pinned ones, "
                             "evicted least recently used first")
    prefetch_hit_rate: float = _p(1.0, lo=0.0, hi=1.0, used_by=("overlap", "spmoe", "fate"),
                                  help="share of the next layer's needed experts fetched ahead "
                                       "(1.0 = an oracle; measured:NAME for a measurement)")
    prefetch_precision: float = _p(1.0, lo=0.0, hi=1.0, lo_open=True, used_by=("overlap",),
                                   help="share of prefetched experts that were needed; wrong "
                                        "prefetches still cross the link")
    expert_budget: int | None = _p(None, kind="int", lo=1, optional=True, used_by=("moespec",),
                                   help="experts per layer verified per step (none: no budget)")
    cutoff_layer: int | None = _p(None, kind="int", lo=0, optional=True, used_by=("spmoe",),
                                  help="last layer spmoe prefetches for (none: all)")
    draft_model_ratio: float = _p(0.05, lo=0.0, hi=1.0, lo_open=True,
                                  used_by=("eagle", "spmoe", "moespec"),
                                  help="a separate draft model's cost per token as a fraction of "
                                       "the target's resident compute")
    tree_width: int = _p(1, kind="int", lo=1, hi=16, used_by=SPECULATIVE,
                         help="draft-tree branching: children drawn without replacement per node "
                              "(RSD, arXiv 2402.14160); 1 = a chain, gamma = the tree's depth")
    tree_levels: int | None = _p(None, kind="int", lo=0, optional=True, used_by=SPECULATIVE,
                                 help="levels from the root that branch; deeper ones extend each "
                                      "leaf by one token (none: every level, RSD-C; 1: tree_width "
                                      "chains)")

    @property
    def speculative(self) -> bool:
        return self.name in SPECULATIVE and self.gamma > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> Policy:
        return replace(self, **changes)


PARAMS: dict[str, Param] = {
    f.name: f.metadata["param"] for f in fields(Policy) if "param" in f.metadata
}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Policy) if f.name in PARAMS}


def check_param(name: str, value: Any, where: str = "") -> Any:
    """A parameter value checked against the registry; the error names field, value and range."""
    if name not in PARAMS:
        raise SpecMoEError(f"{where}{name}: unknown policy parameter; allowed: {', '.join(PARAMS)}"
                           f"{suggest(name, PARAMS)}")
    spec = PARAMS[name]
    bad = SpecMoEError(f"{where}{name}={value!r}: allowed {spec.allowed()}")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "auto")):
        if spec.optional:
            return None
        raise bad
    if spec.kind == "choice":
        if not isinstance(value, str) or value.strip().lower() not in spec.choices:
            raise bad
        return value.strip().lower()
    if spec.kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    if spec.kind == "int" and not float(value).is_integer():
        raise bad
    low_ok = spec.lo is None or (value > spec.lo if spec.lo_open else value >= spec.lo)
    if not low_ok or (spec.hi is not None and value > spec.hi):
        raise bad
    return int(value) if spec.kind == "int" else float(value)


def policy_parameters() -> tuple[str, ...]:
    """Names of the parameters a Policy takes (besides its name)."""
    return tuple(PARAMS)


def check_parameter_names(given, allowed, where: str) -> None:
    """SpecMoEError naming the first unknown keyword and the closest allowed one."""
    for key in given:
        if key not in allowed:
            raise SpecMoEError(f"{where}: unknown argument {key!r}{suggest(key, allowed)}; "
                               f"allowed: {', '.join(allowed)}")


def make_policy(name: str, **params: Any) -> Policy:
    """Validated Policy; unknown names and out-of-range parameters raise SpecMoEError."""
    if not isinstance(name, str):
        raise SpecMoEError(f"policy={name!r}: give a policy name ({', '.join(POLICIES)})")
    key = name.strip().lower()
    if key not in POLICIES:
        raise SpecMoEError(
            f"policy={name!r} is unknown; allowed: {', '.join(POLICIES)}{suggest(key, POLICIES)}"
        )
    p = Policy(name=key, **{k: check_param(k, v) for k, v in params.items() if v is not None})
    validate_policy(p)
    return p


def validate_policy(
    p: Policy, num_experts: int | None = None, num_layers: int | None = None
) -> None:
    """Every parameter in its registry range, plus the checks that need the model's shape."""
    for k in PARAMS:
        check_param(k, getattr(p, k))
    if num_experts is not None and p.draft_experts > num_experts:
        raise SpecMoEError(
            f"draft_experts={p.draft_experts}: the model has only {num_experts} experts per layer"
        )
    if p.name == "specmoe" and p.gamma > 0 and p.draft_experts < 1:
        raise SpecMoEError(
            "draft_experts=0: specmoe drafts with at least 1 resident expert per layer"
        )
    if p.cutoff_layer is not None and num_layers and p.cutoff_layer > num_layers:
        raise SpecMoEError(f"cutoff_layer={p.cutoff_layer}: allowed 0..{num_layers}")
    if p.tree_width > 1 and p.name not in SPECULATIVE:
        raise SpecMoEError(
            f"tree_width={p.tree_width}: policy {p.name!r} does not draft; draft trees "
            f"need a speculative policy ({', '.join(SPECULATIVE)})"
        )
    check_tree(p.gamma, p.tree_width, p.tree_levels)
