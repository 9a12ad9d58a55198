"""Resolving names and numbers into validated inputs: model, system, workload and policy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import System, as_ideal, load_system
from specmoe.inputs.models import ModelSpec, load_model
from specmoe.inputs.policies import (
    SPECULATIVE,
    Policy,
    check_parameter_names,
    make_policy,
    policy_parameters,
    validate_policy,
)
from specmoe.inputs.workload import (
    Acceptance,
    Routing,
    Workload,
    check_routing,
    default_routing,
    parse_acceptance,
    parse_routing,
)


@dataclass
class Setup:
    """Resolved inputs of a prediction: model, system, workload and policy, all validated."""

    model: ModelSpec
    system: System
    workload: Workload
    policy: Policy

    def echo(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "hardware": self.system.name,
            "policy": self.policy.name,
            "batch": self.workload.batch,
            "gamma": self.policy.gamma,
            "draft_experts": self.policy.draft_experts,
            "prompt_len": self.workload.prompt_len,
            "output_len": self.workload.output_len,
            "alpha": self.workload.acceptance.alpha,
            "alpha_spread": self.workload.acceptance.alpha_spread,
            "acceptance_source": self.workload.acceptance.source,
            "routing": self.workload.routing.kind,
            "routing_source": self.workload.routing.source,
            "ideal": self.system.ideal,
        }


def resolve(model: str | ModelSpec = "mixtral-8x7b", hardware: str | System = "h100-pcie",
            policy: str | Policy = "specmoe", batch: int = 64, gamma: int | None = None,
            draft_experts: int | None = None, acceptance: str | float | Acceptance | None = None,
            routing: str | Routing | None = None, prompt_len: int = 512, output_len: int = 256,
            ideal: bool = False, gpu_memory_utilization: float = 0.9,
            **policy_params: Any) -> Setup:
    """Turn names and numbers into validated objects; every error names the field.

    acceptance None: the model's default (published figure, else a stated prior with its spread).
    ideal: predict at the datasheet roofline (an upper bound) instead of the best evidence.
    gpu_memory_utilization: share of the GPU's memory a plan may fill (costs.memory).
    policy_params: further Policy parameters (draft_set, resident_experts, prefetch_hit_rate, ...);
    an unknown name raises SpecMoEError naming it and the closest known argument.
    """
    check_parameter_names(policy_params, resolve_arguments(), "resolve")
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    system = hardware if isinstance(hardware, System) else load_system(hardware)
    if ideal:
        system = as_ideal(system)
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
        raise SpecMoEError(
            f"gamma={pol.gamma}: policy {pol.name!r} does not speculate; use gamma 0 "
            f"or a speculative policy ({', '.join(SPECULATIVE)})"
        )
    acc = (acceptance if isinstance(acceptance, Acceptance)
           else parse_acceptance(acceptance, pol.draft_set, model=spec))
    if routing is None:
        rout = default_routing(spec.name)
    else:
        rout = routing if isinstance(routing, Routing) else parse_routing(routing)
    check_routing(rout, spec.num_experts, spec.name)
    wl = Workload(
        batch=batch,
        prompt_len=prompt_len,
        output_len=output_len,
        routing=rout,
        acceptance=acc,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    return Setup(spec, system, wl, pol)


def resolve_arguments() -> tuple[str, ...]:
    """Every keyword `resolve` (and so `specmoe.predict`) accepts."""
    named = (
        "model",
        "hardware",
        "policy",
        "batch",
        "gamma",
        "draft_experts",
        "acceptance",
        "routing",
        "prompt_len",
        "output_len",
        "ideal",
        "gpu_memory_utilization",
    )
    return named + tuple(k for k in policy_parameters() if k not in named)

