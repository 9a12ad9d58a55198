"""Flags shared by predict, plan and simulate, and how they become API arguments."""
from __future__ import annotations

import argparse
import json
from typing import Any

from specmoe.inputs.hardware import load_system
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
                   help="α in [0,1), 'model' (default: the model's published figure, else a stated "
                        "prior with its spread), 'paper' (SpecMoE's NLLB-MoE τ) or 'measured:NAME'")
    p.add_argument("--routing", default=None,
                   help="'uniform' (default), 'zipf:S' or 'measured:NAME[:resample]'")
    p.add_argument("--ideal", action="store_true",
                   help="datasheet roofline (an upper bound) instead of calibrated/published evidence")
    if with_policy:
        p.add_argument("--policy", default="specmoe", help="ondemand|overlap|caching|cpu|specmoe|...")
        p.add_argument("--gamma", type=int, default=None, help="draft tokens per verification (0 = off)")
        p.add_argument("--draft-experts", type=int, default=None, help="N resident draft experts per layer")
        p.add_argument("--draft-set", default=None, help="random|hot|hottemporal")
        p.add_argument("--cache-fraction", type=float, default=None, help="experts pinned per layer (caching)")
        p.add_argument("--prefetch-precision", type=float, default=None,
                       help="share of prefetched experts that were needed (overlap; 1 = no waste)")
        p.add_argument("--prefetch-hit-rate", default=None,
                       help="share of next-layer experts prefetched right (overlap, spmoe, fate): "
                            "a number in [0,1] (default 1.0, an oracle) or 'measured:NAME'")
        p.add_argument("--spec-min-batch", type=int, default=None, help="speculation off below this batch")
    p.add_argument("--json", action="store_true", help="print one JSON object")


POLICY_FLAGS = ("draft_set", "cache_fraction", "prefetch_hit_rate", "prefetch_precision", "spec_min_batch")


def _hardware(args):
    return load_system(args.hardware, host=args.host, link=args.link, ideal=args.ideal)


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
