"""Flags shared by predict, plan and simulate, and how they become API arguments."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
from specmoe.inputs.policies import DEFAULTS, PARAMS, POLICIES, check_param
from specmoe.inputs.workload import parse_prefetch_hit_rate


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; every option with a default shows it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or not action.option_strings:
            return text
        if action.default in (None, False, argparse.SUPPRESS) or isinstance(action.default, list):
            return text
        return text + " (default: %(default)s)"


def output_path(path: str | os.PathLike | None, flag: str, suffixes: tuple[str, ...] = (),
                directory: bool = False) -> Path | None:
    """Check an output flag's path before any work is done: the suffix is one of `suffixes`, the
    folder exists (created here if missing) and is writable. Raises SpecMoEError naming the flag.

    directory: the path itself is a folder to write into (created if missing).
    """
    if path is None:
        return None
    p = Path(path)
    if suffixes and not str(p).lower().endswith(suffixes):
        raise SpecMoEError(f"{flag} {p}: unknown file type; allowed {', '.join(suffixes)}")
    if not directory and p.is_dir():
        raise SpecMoEError(f"{flag} {p}: is a folder; give a file name")
    folder = p if directory else (p.parent if str(p.parent) else Path("."))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecMoEError(
            f"{flag} {p}: cannot create the folder {folder} ({exc.strerror or exc})"
        ) from None
    if not folder.is_dir():
        raise SpecMoEError(f"{flag} {p}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecMoEError(f"{flag} {p}: the folder {folder} is not writable")
    if p.exists() and not directory and not os.access(p, os.W_OK):
        raise SpecMoEError(f"{flag} {p}: the file exists and is not writable")
    return p


def add_config_flags(p: argparse.ArgumentParser, with_policy: bool = True) -> None:
    p.add_argument(
        "--model",
        default="mixtral-8x7b",
        help="catalog name (`specmoe models list`) or path to a Hugging Face config.json",
    )
    p.add_argument("--hardware", default="h100-pcie",
                   help="system or GPU name (`specmoe hardware list`), or a profile YAML path")
    p.add_argument("--host", default=None, help="override the system's host profile (CPU and DRAM)")
    p.add_argument("--link", default=None, help="override the system's host-GPU link profile")
    p.add_argument("--batch", type=int, default=64, help="sequences decoded together")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=int, default=256, help="generated tokens per sequence")
    p.add_argument(
        "--acceptance",
        default="model",
        help="draft acceptance: α in [0,1), 'model' (the model's published figure, else a stated "
        "prior with its spread), 'paper' (SpecMoE's NLLB-MoE τ) or 'measured:NAME'",
    )
    p.add_argument("--routing", default=None,
                   help="'uniform' (default), 'zipf:S' or 'measured:NAME[:resample]'")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of the GPU's memory a plan may fill, as a serving engine's limit "
                        "(a CUDA context of 0.75 GB comes off the rest)")
    p.add_argument(
        "--ideal",
        action="store_true",
        help="datasheet roofline (an upper bound) instead of calibrated/published evidence",
    )
    p.add_argument("--no-tables", action="store_true",
                   help="never interpolate the GPU's measured kernel tables (hwprofiles/tables/): "
                        "the fitted cost model answers every op")
    if with_policy:
        p.add_argument("--policy", default="specmoe",
                       help=" | ".join(POLICIES) + " (predict covers the first five; simulate all)")
        add_policy_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


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
        return check_param(
            name, text if none else {"int": int, "float": float}.get(kind, str)(text)
        )
    except (ValueError, SpecMoEError):
        raise SpecMoEError(f"{flag}={text}: allowed {PARAMS[name].allowed()}") from None


def _hardware(args):
    system = load_system(args.hardware, host=args.host, link=args.link, ideal=args.ideal)
    if getattr(args, "no_tables", False):
        system = system.model_copy(update={"measured_tables": False})
    return system


def config_kwargs(args, with_policy: bool = True) -> dict[str, Any]:
    kw = {
        "model": args.model,
        "hardware": _hardware(args),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "acceptance": args.acceptance,
        "routing": args.routing,
        "gpu_memory_utilization": args.gpu_memory_utilization,
    }
    if with_policy:
        kw["policy"] = args.policy
        kw.update({k: _policy_value(k, getattr(args, k), args.batch)
                   for k in PARAMS if getattr(args, k) is not None})
    return kw


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float))
