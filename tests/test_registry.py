"""The policy registry is the one spelling: predictors, engine, CLI and sweeps follow it."""

import pytest

from specmoe.app.cli.main import build_parser
from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import ANALYTIC, DEFAULTS, PARAMS, POLICIES, Policy, check_param
from specmoe.planning import sweep
from specmoe.planning.search import POLICY_PARAMS
from specmoe.predictors.sim.policies import POLICY_CLASSES


def test_every_predictor_implements_registry_policies_only():
    assert set(POLICY_CLASSES) == set(POLICIES)  # the simulator covers every policy
    assert set(ANALYTIC) <= set(POLICIES)


def test_engine_providers_are_registry_policies():
    pytest.importorskip("torch")
    from specmoe.engine.policies import PROVIDERS

    assert set(PROVIDERS) <= set(POLICIES)


def test_cli_sweep_and_planner_take_every_registry_parameter():
    helps = {
        name: build_parser(["simulate"])._subparsers._group_actions[0].choices[name].format_help()
        for name in ("predict", "simulate")
    }
    for name in PARAMS:
        flag = "--" + name.replace("_", "-")
        assert all(flag in h for h in helps.values()), flag
        assert name in sweep.AXES
    assert set(POLICY_PARAMS) == set(PARAMS) - {"gamma", "draft_experts"}


@pytest.mark.parametrize("name", list(PARAMS))
def test_defaults_pass_and_values_outside_the_range_fail(name):
    spec = PARAMS[name]
    assert check_param(name, DEFAULTS[name]) == DEFAULTS[name]
    assert getattr(Policy(), name) == DEFAULTS[name]
    bad = {"choice": "nonsense", "bool": 3}.get(spec.kind)
    if bad is None:
        bad = (spec.hi + 1) if spec.hi is not None else (spec.lo - 1)
    with pytest.raises(SpecMoEError, match=name):
        check_param(name, bad)
    if spec.kind == "int":
        with pytest.raises(SpecMoEError):
            check_param(name, (spec.lo or 0) + 1.5)
