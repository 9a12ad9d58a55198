"""The Python API behind the CLI: predict one configuration, plan the best one.

    import specmoe
    p = specmoe.predict(model="mixtral-8x7b", hardware="h100-pcie", policy="specmoe",
                        batch=64, gamma=5, draft_experts=2)
    p["tokens_per_s"], p["breakdown"]
    plan = specmoe.plan(model="mixtral-8x7b", hardware="h100-pcie", batch=64)
    plan["best"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from specmoe.analytic import Analytic, AnalyticResult
from specmoe.errors import SpecMoEError
from specmoe.hardware import System, load_system
from specmoe.models import ModelSpec, load_model
from specmoe.policies import ANALYTIC, SPECULATIVE, Policy, make_policy, validate_policy
from specmoe.workload import Acceptance, Routing, Workload, parse_acceptance, parse_routing

GiB = 1e9  # reports use GB = 1e9 bytes, as the datasheets do


@dataclass
class Setup:
    """Resolved inputs of a prediction: model, system, workload and policy, all validated."""

    model: ModelSpec
    system: System
    workload: Workload
    policy: Policy

    def echo(self) -> dict[str, Any]:
        return {"model": self.model.name, "hardware": self.system.name, "policy": self.policy.name,
                "batch": self.workload.batch, "gamma": self.policy.gamma,
                "draft_experts": self.policy.draft_experts, "prompt_len": self.workload.prompt_len,
                "output_len": self.workload.output_len, "alpha": self.workload.acceptance.alpha,
                "acceptance_source": self.workload.acceptance.source,
                "routing": self.workload.routing.kind}


def resolve(model: str | ModelSpec = "mixtral-8x7b", hardware: str | System = "h100-pcie",
            policy: str | Policy = "specmoe", batch: int = 64, gamma: int | None = None,
            draft_experts: int | None = None, acceptance: str | float | Acceptance | None = None,
            routing: str | Routing | None = None, prompt_len: int = 512, output_len: int = 256,
            **policy_params: Any) -> Setup:
    """Turn names and numbers into validated objects; every error names the field."""
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    system = hardware if isinstance(hardware, System) else load_system(hardware)
    if isinstance(policy, Policy):
        pol = policy
    else:
        speculative = policy in SPECULATIVE
        pol = make_policy(policy, gamma=(gamma if gamma is not None else (5 if speculative else 0)),
                          draft_experts=(draft_experts if draft_experts is not None else
                                         (min(2, spec.num_experts) if speculative else 0)),
                          **policy_params)
    validate_policy(pol, spec.num_experts, spec.num_layers)
    if pol.gamma > 0 and pol.name not in SPECULATIVE:
        raise SpecMoEError(f"gamma={pol.gamma}: policy {pol.name!r} does not speculate; use gamma 0 "
                           f"or a speculative policy ({', '.join(SPECULATIVE)})")
    acc = acceptance if isinstance(acceptance, Acceptance) else parse_acceptance(acceptance, pol.draft_set)
    rout = routing if isinstance(routing, Routing) else parse_routing(routing)
    wl = Workload(batch=batch, prompt_len=prompt_len, output_len=output_len, routing=rout, acceptance=acc)
    return Setup(spec, system, wl, pol)


def summarize(setup: Setup, res: AnalyticResult, i: int = 0) -> dict[str, Any]:
    """One configuration of an AnalyticResult as the JSON object the CLI prints."""
    def at(a):
        return float(np.ravel(a)[i])

    fits = bool(np.ravel(res.fits)[i])
    need, have = at(res.gpu_memory_bytes) / GiB, setup.system.gpu.hbm_gb
    out = {
        **setup.echo(),
        "fits": fits,
        "tokens_per_s": at(res.tokens_per_s) if fits else None,
        "tpot_ms": at(res.tpot_ms) if fits else None,
        "ttft_ms": at(res.ttft_ms) if fits else None,
        "iteration_ms": at(res.iteration_s) * 1e3,
        "tokens_per_iteration": at(res.tokens_per_iteration),
        "h2d_bytes_per_token": at(res.h2d_bytes_per_token),
        "h2d_bytes_per_iteration": at(res.h2d_bytes_per_iteration),
        "gpu_memory_gb": need,
        "gpu_capacity_gb": have,
        "resident_experts_per_layer": int(np.ravel(res.resident_experts_per_layer)[i]),
        "breakdown": {k: at(v) for k, v in res.breakdown.items()},
        "calibrated": bool(setup.system.calibration),
    }
    if not fits:
        out["reason"] = (f"needs {need:.1f} GB of GPU memory; {setup.system.name} has {have:g} GB "
                         f"(model resident {setup.model.resident_bytes / GiB:.1f} GB)")
    return out


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
    from specmoe.planner import draft_expert_grid

    return draft_expert_grid(num_experts)


def plan(model: str | ModelSpec = "mixtral-8x7b", hardware: str | System = "h100-pcie", batch: int = 64,
         policies: tuple[str, ...] = ANALYTIC, gammas=range(17), draft_experts=None,
         **kwargs: Any) -> dict[str, Any]:
    """Choose policy, γ (0 = no speculation) and N: analytic search, simulator confirmation where
    available, and an explanation (see `specmoe.planner.plan` for the options).

    Returns {best: {policy, gamma, draft_experts, tokens_per_s, ...}, best_by_policy, candidates, ...}.
    """
    from specmoe.planner import plan as _plan

    return _plan(model=model, hardware=hardware, batch=batch, policies=policies, gammas=gammas,
                 draft_experts=draft_experts, **kwargs)
