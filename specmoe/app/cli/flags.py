"""Flags shared by predict, plan and simulate, and how they become API arguments."""
from __future__ import annotations

import argparse
import json
from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.policies import DEFAULTS, PARAMS, POLICIES, check_param
from specmoe.inputs.workload import parse_prefetch_hit_rate


def add_config_flags(p: argparse.ArgumentParser, with_policy: bool = True) -> None:
    p.add_argument("--model", default="mixtral-8x7b", help="catalog name or path to a config.json")
    p.add_argument("--hardware", default="h100-pcie", help="system or GPU name, or a YAML path")
    p.add_argument("--host", default=None, help="override the system's host profile")
    p.add_argument("--link", default=None, help="override the system's host-GPU link profile")
    p.add_argument("--batch", type=int, default=64, help="sequences decoded together")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=int, default=256, help="generated tokens per sequence")
    p.add_argument("--acceptance", default=None,
                   help="α in [0,1), 'paper' (SpecMoE's published τ, default) or 'measured:NAME'")
    p.add_argument("--routing", default=None, help="'uniform' (default), 'zipf:S' or 'measured:NAME'")
    if with_policy:
        p.add_argument("--policy", default="specmoe", help="|".join(POLICIES))
        add_policy_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_policy_flags(p: argparse.ArgumentParser) -> None:
    """One flag per registry parameter (inputs.policies.PARAMS): its help, range and users."""
    for name, spec in PARAMS.items():
        extra = " or 'measured:NAME'" if name == "prefetch_hit_rate" else ""
        p.add_argument("--" + name.replace("_", "-"), default=None, metavar=spec.kind.upper(),
                       help=f"{spec.help} [{spec.allowed()}{extra}; default {DEFAULTS[name]}; "
                            f"used by {', '.join(spec.used_by)}]")


def _policy_value(name: str, text: str, batch: int) -> Any:
    """A flag's text as the registry's type; errors name the flag."""
    flag = "--" + name.replace("_", "-")
    if name == "prefetch_hit_rate":
        return parse_prefetch_hit_rate(text, batch, flag)
    kind = PARAMS[name].kind
    try:
        none = text.strip().lower() in ("none", "auto")
        return check_param(name, text if none else {"int": int, "float": float}.get(kind, str)(text))
    except (ValueError, SpecMoEError):
        raise SpecMoEError(f"{flag}={text}: allowed {PARAMS[name].allowed()}") from None


def _hardware(args):
    return load_system(args.hardware, host=args.host, link=args.link)


def config_kwargs(args, with_policy: bool = True) -> dict[str, Any]:
    kw = {"model": args.model, "hardware": _hardware(args), "batch": args.batch, "prompt_len": args.prompt_len,
              "output_len": args.output_len, "acceptance": args.acceptance, "routing": args.routing}
    if with_policy:
        kw["policy"] = args.policy
        kw.update({k: _policy_value(k, getattr(args, k), args.batch)
                   for k in PARAMS if getattr(args, k) is not None})
    return kw


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float))
