"""`specmoe plan-parallel`: EP/TP/DP degrees and speculative token shuffling on several GPUs."""

from __future__ import annotations

from specmoe.app.cli.flags import print_json
from specmoe.inputs.hardware import load_system
from specmoe.inputs.models import load_model
from specmoe.inputs.workload import Workload, parse_routing
from specmoe.planning.parallel import plan_parallel


def cmd_plan_parallel(args) -> int:
    system = load_system(args.hardware, gpu_count=args.gpus)
    workload = Workload(
        batch=args.batch,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        routing=parse_routing(args.routing),
    )
    out = plan_parallel(
        load_model(args.model),
        system,
        workload,
        accuracy=args.accuracy,
        colocation=args.colocation,
        overlap=args.overlap,
    )
    if args.json:
        print_json(out)
        return 0
    b = out["best"]
    print(
        f"{out['model']} on {out['hardware']} ({out['gpus']} GPUs), batch {out['batch']}: "
        f"ep={b['ep']} tp={b['tp']} dp={b['dp']} shuffle={'on' if b['shuffle'] else 'off'} -> "
        f"{b['tokens_per_s']:,.0f} tokens/s, all-to-all {b['a2a_mb_per_layer']:.2f} MB/layer"
        + (" (experts offloaded)" if out["offloaded"] else "")
    )
    print(f"  {out['calibration']}")
    for r in out["candidates"][: args.top]:
        print(
            f"  ep={r['ep']:<3} tp={r['tp']:<3} shuffle={r['shuffle']!s:<5} "
            f"{r['tokens_per_s']:>12,.0f} tok/s  a2a {r['a2a_ms_per_layer']:.3f} ms/layer  "
            f"{r['gpu_memory_gb']:.1f} GB/GPU{'' if r['fits'] else ' (offload)'}"
        )
    return 0


def add_plan_parallel(sub) -> None:
    p = sub.add_parser(
        "plan-parallel", help="choose EP/TP/DP degrees and speculative shuffling on G GPUs"
    )
    p.add_argument("--model", default="deepseek-v2-lite", help="catalog name or config.json path")
    p.add_argument("--hardware", default="hgx-h100x8", help="multi-GPU system name or YAML path")
    p.add_argument("--gpus", type=int, default=None, help="override the system's GPU count")
    p.add_argument("--batch", type=int, default=256, help="sequences decoded together (all GPUs)")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=int, default=256, help="generated tokens per sequence")
    p.add_argument(
        "--routing", default=None, help="'uniform' (default), 'zipf:S' or 'measured:NAME'"
    )
    p.add_argument(
        "--accuracy",
        type=float,
        default=0.0,
        help="speculative shuffling's prediction accuracy q in [0,1] (0 = no shuffling)",
    )
    p.add_argument(
        "--colocation",
        type=float,
        default=None,
        help="expert grouping: chance a token's other experts share its first expert's GPU",
    )
    p.add_argument("--overlap", action="store_true", help="all-to-all overlapped with compute")
    p.add_argument("--top", type=int, default=8, help="candidates to list")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=cmd_plan_parallel)
