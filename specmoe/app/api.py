"""The Python API behind the CLI: predict one configuration, plan the best one.

    import specmoe
    p = specmoe.predict(model="mixtral-8x7b", hardware="h100-pcie", policy="specmoe",
                        batch=64, gamma=5, draft_experts=2)
    p["tokens_per_s"], p["breakdown"]
    plan = specmoe.plan(model="mixtral-8x7b", hardware="h100-pcie", batch=64)
    plan["best"]
"""
from __future__ import annotations

from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import System
from specmoe.inputs.models import ModelSpec
from specmoe.inputs.policies import ANALYTIC
from specmoe.inputs.setup import Setup, resolve
from specmoe.planning.search import draft_expert_grid
from specmoe.planning.search import plan as _plan
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.prediction import summarize

__all__ = ["Setup", "draft_expert_choices", "plan", "predict", "resolve"]


def predict(**kwargs: Any) -> dict[str, Any]:
    """Analytic prediction for one configuration (see `resolve` for the arguments)."""
    setup = resolve(**kwargs)
    if setup.policy.name not in ANALYTIC:
        raise SpecMoEError(f"policy={setup.policy.name!r}: predict covers {ANALYTIC}; "
                           "`specmoe simulate` covers every policy")
    res = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    return summarize(setup, res)


def draft_expert_choices(num_experts: int) -> list[int]:
    """N = 1, 2, 4, … up to E (and E itself)."""
    return draft_expert_grid(num_experts)


def plan(model: str | ModelSpec = "mixtral-8x7b", hardware: str | System = "h100-pcie", batch: int = 64,
         policies: tuple[str, ...] = ANALYTIC, gammas=range(17), draft_experts=None,
         **kwargs: Any) -> dict[str, Any]:
    """Choose policy, γ (0 = no speculation) and N: analytic search, simulator confirmation where
    available, and an explanation (see `specmoe.planning.search.plan` for the options).

    Returns {best: {policy, gamma, draft_experts, tokens_per_s, ...}, best_by_policy, candidates, ...}.
    """
    return _plan(model=model, hardware=hardware, batch=batch, policies=policies, gammas=gammas,
                 draft_experts=draft_experts, **kwargs)
