"""`specmoe engine run | bench | microbench`: add_engine_commands(subparsers) wires them in.

Model choice (run, bench): --weights DIR (Hugging Face config.json + safetensors), --model NAME (a
catalog model at real shapes, random weights, --layers of them), or neither (a small random model).
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from specmoe.app.cli.flags import output_path
from specmoe.errors import SpecMoEError
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import SPECULATIVE, make_policy
from specmoe.inputs.tree import tree_size
from specmoe.inputs.workload import Workload
from specmoe.measure.ingest import model_spec_from_engine
from specmoe.planning.search import GammaController


def add_engine_commands(subparsers) -> argparse.ArgumentParser:
    eng = subparsers.add_parser(
        "engine",
        help="run the real engine: run, bench, microbench (needs torch)",
        description=__doc__,
    )
    sub = eng.add_subparsers(dest="engine_command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="generate for a prompt (or random prompts) and report",
        description="Generate with the real engine and print the text (or ids) and "
        "a summary.\nexample: specmoe engine run --weights experiments/tiny_moe "
        "--prompt 'def add(a, b):' --policy specmoe --gamma 4 --draft-experts 2",
    )
    _model_args(run)
    _policy_args(run)
    run.add_argument(
        "--prompt",
        help="prompt text, tokenized with the tokenizer.json of --weights "
        "(with --ids: comma-separated token ids); default: random prompts",
    )
    run.add_argument("--ids", action="store_true",
                     help="--prompt is token ids, and the output is printed as ids instead of text")
    run.add_argument(
        "--batch", type=int, default=1, help="sequences generated together (the prompt repeated)"
    )
    run.add_argument(
        "--trace", metavar="PATH", help="write the run's trace here (.jsonl or .jsonl.gz)"
    )
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser(
        "bench",
        help="policy x batch x gamma x N grid, one trace per run",
        description="Run every policy × batch × γ × N on random prompts, write one trace per "
        "run\nand results.jsonl into --out (resumable), and print a summary table.",
    )
    _model_args(bench)
    bench.add_argument("--policies", default="ondemand,specmoe", help="comma-separated policies")
    bench.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    bench.add_argument(
        "--gammas", default="4", help="comma-separated γ values for speculative policies"
    )
    bench.add_argument("--draft-experts", dest="draft_experts_list", default="2",
                       help="comma-separated N values for specmoe")
    bench.add_argument("--draft-set", default="hottemporal", help="random | hot | hottemporal")
    bench.add_argument(
        "--resident-experts",
        type=int,
        help="caching/cpu: hottest experts pinned per layer (default 10%% of a layer)",
    )
    bench.add_argument(
        "--lru-slots",
        type=int,
        default=0,
        help="caching: expert slots shared by all layers, least recently used evicted",
    )
    bench.add_argument(
        "--spec-min-batch", type=int, default=1, help="speculation off below this batch"
    )
    bench.add_argument("--draft-model", help="separate draft model (eagle): weights directory")
    bench.add_argument("--out", required=True, metavar="DIR", help="output directory (resumable)")
    bench.add_argument("--warmup", type=int, default=1, help="untraced runs before each traced one")
    bench.set_defaults(func=cmd_bench)

    mb = sub.add_parser("microbench", help="GEMM, expert, attention, copy, CPU-expert timings",
                        description="Time the ops the cost model needs; `specmoe calibrate` fits a "
                                    "hardware profile to the trace.")
    mb.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    mb.add_argument("--out", required=True, metavar="PATH", help="trace path (.jsonl or .jsonl.gz)")
    mb.add_argument("--kinds", default="gemm,moe,expert,attn,h2d,d2h,cpu_expert",
                    help="comma-separated op kinds to time")
    mb.add_argument("--quick", action="store_true", help="tiny shapes (tests, CPU)")
    mb.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16 | float16")
    mb.add_argument("--reps", type=int, help="repeats per shape (default: per kind)")
    mb.add_argument("--model", help="catalog model whose shapes to time (default: Mixtral-8x7B's)")
    mb.set_defaults(func=cmd_microbench)
    return eng


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="DIR",
                   help="directory with config.json + *.safetensors (e.g. experiments/tiny_moe)")
    p.add_argument("--model", help="catalog model name: real shapes, random weights")
    p.add_argument(
        "--layers", type=int, help="use only this many layers (default: all; 2 for random models)"
    )
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 | float64 (default: the weights')")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--prompt-len", type=int, default=16, help="tokens per random prompt")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate per sequence")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of random weights, prompts and sampling"
    )
    p.add_argument("--synthetic-acceptance", type=float,
                   help="accept each draft with this probability (timing with random weights)")
    p.add_argument("--expert-slots", type=int,
                   help="expert slots on the device per layer (default: the policy's)")
    p.add_argument(
        "--cpu-threshold",
        type=int,
        help="(cpu policy) compute an expert on the CPU when it has at most this many tokens",
    )


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy", default="ondemand", help="ondemand | overlap | caching | cpu | specmoe | eagle"
    )
    p.add_argument(
        "--gamma",
        default="0",
        help="draft tokens per verification, or 'auto' (engine run: planner's γ, re-planned "
        "as acceptance is measured; needs the core extras)",
    )
    p.add_argument(
        "--hardware",
        default=None,
        help="profile the planner uses for --gamma auto (default on a CPU: cpu-local-calibrated)",
    )
    p.add_argument(
        "--draft-experts", type=int, default=0, help="N resident draft experts per layer (specmoe)"
    )
    p.add_argument("--draft-set", default="hottemporal", help="random | hot | hottemporal")
    p.add_argument("--resident-experts", type=int,
                   help="caching/cpu: hottest experts pinned per layer (default 10%% of a layer)")
    p.add_argument("--lru-slots", type=int, default=0,
                   help="caching: expert slots shared by all layers, least recently used evicted")
    p.add_argument("--spec-min-batch", type=int, default=1, help="speculation off below this batch")
    p.add_argument(
        "--tree-width",
        type=int,
        default=1,
        help="draft tree: children per node, drawn without replacement (RSD); 1 = a chain",
    )
    p.add_argument("--tree-levels", type=int, default=None,
                   help="draft tree: levels that branch (default every level)")
    p.add_argument("--draft-model", help="separate draft model (eagle): weights directory")


# ----------------------------------------------------------------------------- building blocks


def build_weights(args):
    """Weights from --weights, --model (catalog, random at real shapes) or a small random model."""
    from specmoe.engine.config import MoEConfig
    from specmoe.engine.weights import load_weights, random_model

    pin = str(args.device).startswith("cuda")
    if args.weights:
        return load_weights(args.weights, layers=args.layers, pin=pin, dtype=args.dtype)
    over = {"dtype": args.dtype} if args.dtype else {}
    if args.model:
        cfg = MoEConfig.from_spec(load_model(args.model), layers=args.layers or 2, **over)
    else:
        cfg = MoEConfig(layers=args.layers or 2, **over)
    return random_model(cfg, seed=args.seed, pin=pin)


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SpecMoEError(f"{name}={text!r}: expected comma-separated integers") from None


def tokenizer(args):
    """The tokenizer.json beside --weights (the tiny model ships one), or None."""
    path = Path(args.weights) / "tokenizer.json" if getattr(args, "weights", None) else None
    if path is None or not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    return Tokenizer.from_file(str(path))


def _prompts(args, vocab: int, batch: int, tok=None) -> list[list[int]]:
    if getattr(args, "prompt", None):
        if getattr(args, "ids", False):
            p = _ints(args.prompt, "--prompt")
        elif tok is None:
            raise SpecMoEError(
                "--prompt: text needs a tokenizer.json beside --weights (e.g. --weights "
                "experiments/tiny_moe); give token ids with --ids"
            )
        else:
            p = tok.encode(args.prompt).ids
        bad = [i for i in p if not 0 <= i < vocab]
        if not p or bad:
            raise SpecMoEError(
                f"--prompt: token ids must lie in 0..{vocab - 1}"
                + (f", got {bad[0]}" if bad else "")
            )
        return [p] * batch
    rng = random.Random(args.seed)
    return [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(batch)]


def _check_sizes(args) -> None:
    for flag in ("batch", "prompt_len", "max_new_tokens"):
        v = getattr(args, flag, None)
        if v is not None and v < 1:
            raise SpecMoEError(f"--{flag.replace('_', '-')}={v}: must be >= 1")


def _engine(w, policy, args, batch: int, longest: int, tracer=None, affinity=None):
    from specmoe.engine.generate import Engine

    gamma = policy.gamma if policy.speculative else 0
    # a tree's extra slots
    tree = int(tree_size(gamma, policy.tree_width, policy.tree_levels)) - gamma
    draft = getattr(args, "draft_model", None)
    return Engine(w, policy, device=args.device, tracer=tracer, expert_slots=args.expert_slots,
                  cpu_threshold=args.cpu_threshold, max_batch=batch,
                  max_seq_len=longest + args.max_new_tokens + 2 * gamma + 2 + tree, draft=draft,
                  affinity=affinity)


def summary(stats) -> str:
    s = stats
    gb = {k: round(v / 1e9, 4) for k, v in s.bytes_by_link.items()}
    text = (f"tokens/s {s.tokens_per_s:.1f}  new tokens {s.new_tokens}  batch {s.batch}  "
            f"decode {s.decode_s:.3f}s  bytes GB {gb}  experts fetched {s.experts_fetched}  "
            f"hits {s.hits}  misses {s.misses}")
    if s.speculative:
        text += (f"\naccepted tokens per verification {s.accepted_per_verify:.3f} "
                 f"(tokens per verification {s.tokens_per_verify:.3f}, gamma {s.gamma}, "
                 f"{s.verifications} verifications)")
        if s.synthetic_acceptance is not None:
            text += f"  [synthetic acceptance {s.synthetic_acceptance}]"
    return text


# ----------------------------------------------------------------------------- commands


AUTO_GAMMAS = range(17)


def _gamma(args) -> int | None:
    """--gamma as an int, or None for 'auto'."""
    if str(args.gamma).strip().lower() == "auto":
        return None
    return _ints(args.gamma, "--gamma")[0] if str(args.gamma).strip() else 0


def gamma_controller(w, args, draft_experts: int):
    """The planner's online γ controller for this engine model, hardware profile and batch."""

    hardware = args.hardware or ("cpu-local-calibrated" if str(args.device) == "cpu" else None)
    if hardware is None:
        raise SpecMoEError(
            "--gamma auto on a GPU needs --hardware (a profile of this GPU, ideally calibrated)"
        )
    spec = model_spec_from_engine(w.cfg.to_dict(), "engine model")
    wl = Workload(batch=args.batch, prompt_len=args.prompt_len, output_len=args.max_new_tokens)
    return GammaController(
        spec, hardware, wl, draft_experts=draft_experts or None, gammas=AUTO_GAMMAS
    )


def cmd_run(args) -> int:
    from specmoe.engine.tracer import Tracer

    _check_sizes(args)
    output_path(args.trace, "--trace", (".jsonl", ".jsonl.gz"))
    g = _gamma(args)
    w = build_weights(args)
    tok = None if args.ids else tokenizer(args)
    prompts = _prompts(args, w.cfg.vocab, args.batch, tok)
    ctl = None
    if g is None:
        if args.policy != "specmoe":
            raise SpecMoEError(
                f"--gamma auto: plans the specmoe policy's γ, got --policy {args.policy}"
            )
        ctl = gamma_controller(w, args, args.draft_experts)
        g, args.draft_experts = max(AUTO_GAMMAS), ctl.draft_experts
    policy = make_policy(args.policy, gamma=g, draft_experts=args.draft_experts,
                         draft_set=args.draft_set, resident_experts=args.resident_experts,
                         lru_slots=args.lru_slots,
                         spec_min_batch=args.spec_min_batch, tree_width=args.tree_width,
                         tree_levels=args.tree_levels)
    tracer = Tracer(args.device) if args.trace else None
    eng = _engine(w, policy, args, args.batch, max(map(len, prompts)), tracer)
    res = eng.generate(prompts, args.max_new_tokens,
                       temperature=args.temperature, seed=args.seed,
                       synthetic_acceptance=args.synthetic_acceptance, gamma_controller=ctl)
    if ctl is not None:
        st = ctl.state()
        print(f"gamma auto: γ per round {res.stats.gamma_by_round}, measured α {st['alpha']:.3f} "
              f"(prior {st['prior_alpha']:.3f}), N={st['draft_experts']}")
    if args.trace:
        tracer.header["result"] = res.stats.to_dict()
        tracer.write(args.trace)
    _print_outputs(prompts, res.tokens, tok)
    print(summary(res.stats))
    return 0


def _print_outputs(prompts: list[list[int]], outputs: list[list[int]], tok, shown: int = 4) -> None:
    """The first few sequences: prompt and continuation as text where a tokenizer exists, else
    ids."""
    for b, toks in enumerate(outputs[:shown]):
        if tok is None:
            print(f"seq {b}: {toks}")
        else:
            print(f"--- seq {b}: prompt | continuation ---")
            print(tok.decode(prompts[b]) + " | " + tok.decode(toks))
    if len(outputs) > shown:
        print(f"({len(outputs) - shown} more sequences not shown)")


def bench_grid(args) -> list[dict]:
    """The runs of a bench: speculative policies take every gamma (and N for specmoe)."""

    runs = []
    for name, batch in itertools.product(
        args.policies.split(","), _ints(args.batches, "--batches")
    ):
        name = name.strip()
        gammas = _ints(args.gammas, "--gammas") if name in SPECULATIVE else [0]
        ns = _ints(args.draft_experts_list, "--draft-experts") if name == "specmoe" else [0]
        for g, n in itertools.product(gammas, ns):
            runs.append({"policy": name, "batch": batch, "gamma": g, "draft_experts": n,
                             "file": f"{name}-b{batch}-g{g}-n{n}.jsonl.gz"})
    return runs


class _Progress:
    """A rich progress bar over engine runs."""

    def __init__(self, total: int):
        self.total, self.done, self.bar = total, 0, None
        self.bar = Progress()

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
            self.task = self.bar.add_task("engine bench", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def step(self, description: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=description)
        else:
            print(f"[{self.done + 1}/{self.total}] {description}", flush=True)

    def advance(self) -> None:
        self.done += 1
        if self.bar:
            self.bar.advance(self.task)


def cmd_bench(args) -> int:
    from specmoe.engine.tracer import Tracer

    _check_sizes(args)
    out = output_path(args.out, "--out", directory=True)
    runs = bench_grid(args)
    todo = [r for r in runs if not (out / r["file"]).exists()]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done, writing to {out}")
    w = build_weights(args) if todo else None
    affinity = None
    if any(r["policy"] == "specmoe" for r in todo):  # offline table: once for every run
        from specmoe.engine.affinity import affinity_ranking

        affinity = affinity_ranking(w.experts, args.device)
    with _Progress(len(todo)) as bar:
        for r in todo:
            bar.step(f"{r['policy']} B={r['batch']} g={r['gamma']} N={r['draft_experts']}")
            policy = make_policy(r["policy"], gamma=r["gamma"], draft_experts=r["draft_experts"],
                                 draft_set=args.draft_set, resident_experts=args.resident_experts,
                                 lru_slots=args.lru_slots,
                                 spec_min_batch=args.spec_min_batch)
            prompts = _prompts(args, w.cfg.vocab, r["batch"])
            eng = _engine(w, policy, args, r["batch"], args.prompt_len, affinity=affinity)
            kw = {"temperature": args.temperature, "seed": args.seed,
                      "synthetic_acceptance": args.synthetic_acceptance}
            for _ in range(args.warmup):
                eng.generate(prompts, args.max_new_tokens, **kw)
            eng.tracer = Tracer(args.device)
            res = eng.generate(prompts, args.max_new_tokens, **kw)
            eng.tracer.header["result"] = res.stats.to_dict()
            eng.tracer.write(out / r["file"])
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps({**r, **res.stats.to_dict()}) + "\n")
            bar.advance()
            del eng  # free the slot pool and KV cache before the next run allocates its own
            _empty_cache(args.device)
    print_bench_table(out / "results.jsonl", runs)
    return 0


def print_bench_table(results: Path, runs: list[dict]) -> None:
    """One row per run of this grid (the latest result of each): tokens/s, bytes moved,
    acceptance."""
    latest: dict[str, dict] = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                latest[row.get("file", "")] = row
    t = Table(title=f"engine bench ({results.parent})")
    for col in ("policy", "batch", "γ", "N", "tokens/s", "GB host→device", "experts fetched",
                "tokens per verification"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in runs:
        row = latest.get(r["file"])
        if row is None:
            continue
        h2d = row.get("bytes_by_link", {}).get("h2d", 0)
        t.add_row(
            r["policy"],
            str(r["batch"]),
            str(r["gamma"]),
            str(r["draft_experts"]),
            f"{row['tokens_per_s']:,.1f}",
            f"{h2d / 1e9:,.3f}",
            f"{row.get('experts_fetched', 0):,}",
            f"{row['tokens_per_verify']:.2f}" if row.get("speculative") else "-",
        )
    console = Console()
    Console(width=max(console.width, 112)).print(t)   # headers stay on one line when piped


def cmd_microbench(args) -> int:
    from specmoe.engine.microbench import run_microbench

    shapes = {}
    if args.model:
        from specmoe.engine.config import MoEConfig

        c = MoEConfig.from_spec(load_model(args.model), layers=1)
        shapes = {"hidden": c.hidden, "ffn": c.expert_ffn, "heads": c.heads,
                  "kv_heads": c.kv_heads, "head_dim": c.head_dim}
    output_path(args.out, "--out", (".jsonl", ".jsonl.gz"))
    path = run_microbench(args.out, device=args.device, kinds=args.kinds.split(","),
                          quick=args.quick, dtype=args.dtype, reps=args.reps, **shapes)
    print(f"wrote {path}")
    return 0


def _empty_cache(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
