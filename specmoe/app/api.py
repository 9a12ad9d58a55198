"""The Python API behind the CLI: predict one configuration, plan the best one.

    import specmoe
    p = specmoe.predict(model="mixtral-8x7b", hardware="h100-pcie", policy="specmoe",
                        batch=64, gamma=5, draft_experts=2)
    p["tokens_per_s"], p["breakdown"]
    plan = specmoe.plan(model="mixtral-8x7b", hardware="h100-pcie", batch=64)
    plan["best"]
    slo = specmoe.plan(model="mixtral-8x7b", hardware="h100-pcie", tpot_ms=100, ttft_ms=2000,
                       rate=2)
    slo["best"]["batch"], slo["replicas"]
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import System
from specmoe.inputs.models import ModelSpec
from specmoe.inputs.policies import ANALYTIC, PLANNED, Policy, check_parameter_names
from specmoe.inputs.setup import Setup, resolve, resolve_arguments
from specmoe.inputs.workload import Acceptance, Routing
from specmoe.planning.search import POLICY_PARAMS, draft_expert_grid
from specmoe.planning.search import plan as _plan
from specmoe.planning.slo import plan_slo
from specmoe.predictors.analytic import Analytic
from specmoe.predictors.prediction import summarize

__all__ = ["Setup", "draft_expert_choices", "plan", "predict", "resolve"]


def predict(model: str | ModelSpec = "mixtral-8x7b", hardware: str | System = "h100-pcie",
            policy: str | Policy = "specmoe", batch: int = 64, gamma: int | None = None,
            draft_experts: int | None = None, acceptance: str | float | Acceptance | None = None,
            routing: str | Routing | None = None, prompt_len: int = 512, output_len: int = 256,
            **policy_params: Any) -> dict[str, Any]:
    """Analytic prediction of one configuration's throughput, latency, PCIe traffic and memory.

    model: catalog name (`specmoe models list`), config.json path or a ModelSpec.
    hardware: system or GPU name (`specmoe hardware list`), profile YAML path or a System.
    policy: ondemand, overlap, caching, cpu or specmoe (`specmoe simulate` covers the others).
    batch: sequences decoded together. prompt_len, output_len: tokens per sequence.
    gamma: draft tokens per verification (0 = no speculation; default 5 for specmoe, else 0).
    draft_experts: N resident draft experts per layer (default 2 for specmoe).
    acceptance: α in [0, 1), "paper" (SpecMoE's published τ(γ, N); the default) or "measured:NAME".
    routing: "uniform" (default), "zipf:S" or "measured:NAME".
    policy_params: further Policy parameters: draft_set, substitution, spec_min_batch,
        resident_experts, lru_slots, prefetch_hit_rate, prefetch_precision (see
        specmoe.inputs.policies.Policy).

    Returns the prediction dict: tokens_per_s, tpot_ms, ttft_ms, iteration_ms, breakdown (seconds
    per iteration by part), h2d_bytes_per_token, gpu_memory_gb, fits (and reason when it does not),
    calibrated, and the inputs echoed. Bad input raises SpecMoEError naming the argument.
    """
    check_parameter_names(policy_params, resolve_arguments(), "predict")
    setup = resolve(model=model, hardware=hardware, policy=policy, batch=batch, gamma=gamma,
                    draft_experts=draft_experts, acceptance=acceptance, routing=routing,
                    prompt_len=prompt_len, output_len=output_len, **policy_params)
    if setup.policy.name not in ANALYTIC:
        raise SpecMoEError(f"policy={setup.policy.name!r}: predict covers {ANALYTIC}; "
                           "`specmoe simulate` covers every policy")
    res = Analytic(setup.model, setup.system, setup.workload).evaluate(setup.policy)
    return summarize(setup, res)


def draft_expert_choices(num_experts: int) -> list[int]:
    """N = 1, 2, 4, … up to E (and E itself)."""
    return draft_expert_grid(num_experts)


PLAN_ARGUMENTS = ("model", "hardware", "batch", "policies", "gammas", "draft_experts", "confirm",
                  "top", "static_batch", "acceptance", "routing", "prompt_len", "output_len",
                  "tpot_ms", "ttft_ms", "rate", "max_batch", "interval", "seed", "ideal",
                  "gpu_memory_utilization", *POLICY_PARAMS)


def plan(model: str | ModelSpec = "mixtral-8x7b", hardware: str | System = "h100-pcie",
         batch: int = 64, policies: Iterable[str] = PLANNED, gammas: Iterable[int] = range(17),
         draft_experts: Iterable[int] | None = None, confirm: str = "auto", top: int = 3,
         static_batch: bool = False, acceptance: str | float | Acceptance | None = None,
         routing: str | Routing | None = None, prompt_len: int = 512, output_len: int = 256,
         tpot_ms: float | None = None, ttft_ms: float | None = None, rate: float | None = None,
         max_batch: int = 512, interval: str = "auto", seed: int = 0,
         **policy_params: Any) -> dict[str, Any]:
    """Choose policy, draft length γ (0 = no speculation) and draft experts N for a model,
    hardware and batch: an analytic search over every policy × γ × N, the top candidates
    confirmed by the simulator where it is installed, and an explanation of the choice.

    policies: which policies to search (default PLANNED: those whose every parameter has a
        measured or published value; name spmoe, moespec, eagle or fate to add them).
    gammas: draft lengths to try. draft_experts: N values (default 1, 2, 4, … E, refined).
    confirm: "auto" (simulator where importable), "sim" (required) or "analytic" (no simulation).
    top: candidates the simulator confirms besides each policy's best.
    static_batch: the batch runs as one static batch (throughput counts its slowest sequence).
    acceptance, routing, prompt_len, output_len, ideal, gpu_memory_utilization, policy_params:
    as for `predict`.

    Returns {model, hardware, batch, best: {policy, gamma, draft_experts, tokens_per_s, ...},
    best_by_policy, candidates, explanation, calibrated, engine, notes}.

    Service level (tpot_ms and/or ttft_ms in ms, optionally rate in requests/s): the batch is
    searched too (1..max_batch) for the highest throughput whose p90 TPOT and TTFT meet the
    targets (interval="point" compares point values), and with `rate` the GPUs (replicas) to
    serve it; the serving simulator confirms the choice (seed). `batch`, `top` and
    `static_batch` do not apply. See `specmoe.planning.slo.plan_slo`.
    """
    check_parameter_names(policy_params, PLAN_ARGUMENTS, "plan")
    if tpot_ms is not None or ttft_ms is not None or rate is not None:
        if static_batch:
            raise SpecMoEError(
                "static_batch: not available with service-level targets (tpot_ms, ttft_ms, rate)"
            )
        return plan_slo(
            model=model,
            hardware=hardware,
            tpot_ms=tpot_ms,
            ttft_ms=ttft_ms,
            rate=rate,
            policies=policies,
            gammas=gammas,
            draft_experts=draft_experts,
            max_batch=max_batch,
            confirm=confirm,
            interval=interval,
            seed=seed,
            acceptance=acceptance,
            routing=routing,
            prompt_len=prompt_len,
            output_len=output_len,
            **policy_params,
        )
    return _plan(model=model, hardware=hardware, batch=batch, policies=policies, gammas=gammas,
                 draft_experts=draft_experts, confirm=confirm, top=top, static_batch=static_batch,
                 acceptance=acceptance, routing=routing, prompt_len=prompt_len,
                 output_len=output_len, **policy_params)
