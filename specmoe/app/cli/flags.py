"""Flags shared by predict, plan and simulate, and how they become API arguments."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from specmoe.errors import SpecMoEError
from specmoe.inputs.hardware import load_system
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
        raise SpecMoEError(f"{flag} {p}: cannot create the folder {folder} ({exc.strerror or exc})") from None
    if not folder.is_dir():
        raise SpecMoEError(f"{flag} {p}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecMoEError(f"{flag} {p}: the folder {folder} is not writable")
    if p.exists() and not directory and not os.access(p, os.W_OK):
        raise SpecMoEError(f"{flag} {p}: the file exists and is not writable")
    return p


def add_config_flags(p: argparse.ArgumentParser, with_policy: bool = True) -> None:
    p.add_argument("--model", default="mixtral-8x7b",
                   help="catalog name (`specmoe models list`) or path to a Hugging Face config.json")
    p.add_argument("--hardware", default="h100-pcie",
                   help="system or GPU name (`specmoe hardware list`), or a profile YAML path")
    p.add_argument("--host", default=None, help="override the system's host profile (CPU and DRAM)")
    p.add_argument("--link", default=None, help="override the system's host-GPU link profile")
    p.add_argument("--batch", type=int, default=64, help="sequences decoded together")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=int, default=256, help="generated tokens per sequence")
    p.add_argument("--acceptance", default=None,
                   help="draft acceptance: α in [0,1), 'paper' (SpecMoE's published τ(γ, N)) or "
                        "'measured:NAME' (default: paper)")
    p.add_argument("--routing", default=None,
                   help="expert routing: 'uniform', 'zipf:S' or 'measured:NAME' (default: uniform)")
    if with_policy:
        p.add_argument("--policy", default="specmoe",
                       help="ondemand | overlap | caching | cpu | specmoe (predict); simulate also "
                            "takes spmoe | moespec | fate | eagle")
        p.add_argument("--gamma", type=int, default=None,
                       help="draft tokens per verification, 0 = no speculation "
                            "(default: 5 for speculative policies, else 0)")
        p.add_argument("--draft-experts", type=int, default=None,
                       help="N resident draft experts per layer (default: 2 for speculative policies)")
        p.add_argument("--draft-set", default=None,
                       help="how the N draft experts are chosen: random | hot | hottemporal "
                            "(default: hottemporal)")
        p.add_argument("--cache-fraction", type=float, default=None,
                       help="share of experts per layer pinned on the GPU (caching; default: as many "
                            "as fit)")
        p.add_argument("--prefetch-precision", type=float, default=None,
                       help="share of prefetched experts that were needed (overlap; default 1 = no waste)")
        p.add_argument("--prefetch-hit-rate", default=None,
                       help="share of next-layer experts prefetched right (overlap, spmoe, fate): "
                            "a number in [0,1] or 'measured:NAME' (default: 1.0, an oracle)")
        p.add_argument("--spec-min-batch", type=int, default=None,
                       help="speculation off below this batch (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


POLICY_FLAGS = ("draft_set", "cache_fraction", "prefetch_hit_rate", "prefetch_precision", "spec_min_batch")


def _hardware(args):
    return load_system(args.hardware, host=args.host, link=args.link)


def config_kwargs(args, with_policy: bool = True) -> dict[str, Any]:
    kw = {"model": args.model, "hardware": _hardware(args), "batch": args.batch, "prompt_len": args.prompt_len,
              "output_len": args.output_len, "acceptance": args.acceptance, "routing": args.routing}
    if with_policy:
        kw.update(policy=args.policy, gamma=args.gamma, draft_experts=args.draft_experts)
        kw.update({k: getattr(args, k) for k in POLICY_FLAGS if getattr(args, k) is not None})
        if args.prefetch_hit_rate is not None:
            kw["prefetch_hit_rate"] = parse_prefetch_hit_rate(args.prefetch_hit_rate, args.batch,
                                                              "--prefetch-hit-rate")
    return kw


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float))
