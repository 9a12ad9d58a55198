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

from rich.progress import Progress

from specmoe.errors import SpecMoEError
from specmoe.inputs.models import load_model
from specmoe.inputs.policies import SPECULATIVE, make_policy
from specmoe.inputs.workload import Workload
from specmoe.measure.ingest import model_spec_from_engine
from specmoe.planning.search import GammaController


def add_engine_commands(subparsers) -> argparse.ArgumentParser:
    eng = subparsers.add_parser("engine", help="run the real MoE engine (torch; CPU or CUDA)")
    sub = eng.add_subparsers(dest="engine_command", required=True)

    run = sub.add_parser("run", help="generate for a prompt (or random prompts) and report")
    _model_args(run)
    _policy_args(run)
    run.add_argument("--prompt", help="comma-separated token ids (default: random prompts)")
    run.add_argument("--batch", type=int, default=1)
    run.add_argument("--trace", help="write the run's trace here (.jsonl or .jsonl.gz)")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="policy x batch x gamma x N grid, one trace per run")
    _model_args(bench)
    bench.add_argument("--policies", default="ondemand,specmoe")
    bench.add_argument("--batches", default="1,8")
    bench.add_argument("--gammas", default="4", help="for speculative policies")
    bench.add_argument("--draft-experts", dest="draft_experts_list", default="2",
                       help="N values for specmoe")
    bench.add_argument("--draft-set", default="hottemporal")
    bench.add_argument("--resident-experts", type=int,
                       help="caching/cpu: hottest experts pinned per layer (default 10%% of a layer)")
    bench.add_argument("--lru-slots", type=int, default=0,
                       help="caching: expert slots shared by all layers, least recently used evicted")
    bench.add_argument("--spec-min-batch", type=int, default=1)
    bench.add_argument("--draft-model", help="separate draft model (eagle): weights directory")
    bench.add_argument("--out", required=True, help="output directory (resumable)")
    bench.add_argument("--warmup", type=int, default=1, help="untraced runs before each traced one")
    bench.set_defaults(func=cmd_bench)

    mb = sub.add_parser("microbench", help="GEMM, expert, attention, copy, CPU-expert timings")
    mb.add_argument("--device", default="cpu")
    mb.add_argument("--out", required=True, help="trace path (.jsonl or .jsonl.gz)")
    mb.add_argument("--kinds", default="gemm,expert,attn,h2d,d2h,cpu_expert")
    mb.add_argument("--quick", action="store_true", help="tiny shapes (tests, CPU)")
    mb.add_argument("--dtype", default="bfloat16")
    mb.add_argument("--reps", type=int)
    mb.add_argument("--model", help="catalog model whose shapes to time (default Mixtral-8x7B's)")
    mb.set_defaults(func=cmd_microbench)
    return eng


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="directory with config.json + *.safetensors")
    p.add_argument("--model", help="catalog model name: real shapes, random weights")
    p.add_argument("--layers", type=int, help="use only this many layers")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 | float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-acceptance", type=float,
                   help="accept each draft with this probability (timing with random weights)")
    p.add_argument("--expert-slots", type=int)
    p.add_argument("--cpu-threshold", type=int)


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="ondemand")
    p.add_argument("--gamma", default="0",
                   help="draft tokens per verification, or 'auto' (engine run: planner's γ, re-planned "
                        "as acceptance is measured; needs the core extras)")
    p.add_argument("--hardware", default=None,
                   help="profile the planner uses for --gamma auto (default on a CPU: cpu-local-calibrated)")
    p.add_argument("--draft-experts", type=int, default=0)
    p.add_argument("--draft-set", default="hottemporal")
    p.add_argument("--resident-experts", type=int,
                   help="caching/cpu: hottest experts pinned per layer (default 10%% of a layer)")
    p.add_argument("--lru-slots", type=int, default=0,
                   help="caching: expert slots shared by all layers, least recently used evicted")
    p.add_argument("--spec-min-batch", type=int, default=1)
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


def _prompts(args, vocab: int, batch: int) -> list[list[int]]:
    if getattr(args, "prompt", None):
        p = _ints(args.prompt, "--prompt")
        return [p] * batch

    rng = random.Random(args.seed)
    return [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(batch)]


def _engine(w, policy, args, batch: int, tracer=None, affinity=None):
    from specmoe.engine.generate import Engine

    gamma = policy.gamma if policy.speculative else 0
    longest = (len(_ints(args.prompt, "--prompt")) if getattr(args, "prompt", None) else args.prompt_len)
    draft = getattr(args, "draft_model", None)
    return Engine(w, policy, device=args.device, tracer=tracer, expert_slots=args.expert_slots,
                  cpu_threshold=args.cpu_threshold, max_batch=batch,
                  max_seq_len=longest + args.max_new_tokens + 2 * gamma + 2, draft=draft,
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
        raise SpecMoEError("--gamma auto on a GPU needs --hardware (a profile of this GPU, ideally calibrated)")
    spec = model_spec_from_engine(w.cfg.to_dict(), "engine model")
    wl = Workload(batch=args.batch, prompt_len=args.prompt_len, output_len=args.max_new_tokens)
    return GammaController(spec, hardware, wl, draft_experts=draft_experts or None, gammas=AUTO_GAMMAS)


def cmd_run(args) -> int:
    from specmoe.engine.tracer import Tracer

    g = _gamma(args)
    w = build_weights(args)
    ctl = None
    if g is None:
        if args.policy != "specmoe":
            raise SpecMoEError(f"--gamma auto: plans the specmoe policy's γ, got --policy {args.policy}")
        ctl = gamma_controller(w, args, args.draft_experts)
        g, args.draft_experts = max(AUTO_GAMMAS), ctl.draft_experts
    policy = make_policy(args.policy, gamma=g, draft_experts=args.draft_experts,
                         draft_set=args.draft_set, resident_experts=args.resident_experts,
                         lru_slots=args.lru_slots,
                         spec_min_batch=args.spec_min_batch)
    tracer = Tracer(args.device) if args.trace else None
    eng = _engine(w, policy, args, args.batch, tracer)
    res = eng.generate(_prompts(args, w.cfg.vocab, args.batch), args.max_new_tokens,
                       temperature=args.temperature, seed=args.seed,
                       synthetic_acceptance=args.synthetic_acceptance, gamma_controller=ctl)
    if ctl is not None:
        st = ctl.state()
        print(f"gamma auto: γ per round {res.stats.gamma_by_round}, measured α {st['alpha']:.3f} "
              f"(prior {st['prior_alpha']:.3f}), N={st['draft_experts']}")
    if args.trace:
        tracer.header["result"] = res.stats.to_dict()
        tracer.write(args.trace)
    for b, toks in enumerate(res.tokens[: min(4, len(res.tokens))]):
        print(f"seq {b}: {toks}")
    print(summary(res.stats))
    return 0


def bench_grid(args) -> list[dict]:
    """The runs of a bench: speculative policies take every gamma (and N for specmoe)."""

    runs = []
    for name, batch in itertools.product(args.policies.split(","), _ints(args.batches, "--batches")):
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

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
            eng = _engine(w, policy, args, r["batch"], affinity=affinity)
            prompts = _prompts(args, w.cfg.vocab, r["batch"])
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
    return 0


def cmd_microbench(args) -> int:
    from specmoe.engine.microbench import run_microbench

    shapes = {}
    if args.model:
        from specmoe.engine.config import MoEConfig

        c = MoEConfig.from_spec(load_model(args.model), layers=1)
        shapes = {"hidden": c.hidden, "ffn": c.expert_ffn, "heads": c.heads,
                  "kv_heads": c.kv_heads, "head_dim": c.head_dim}
    path = run_microbench(args.out, device=args.device, kinds=args.kinds.split(","),
                          quick=args.quick, dtype=args.dtype, reps=args.reps, **shapes)
    print(f"wrote {path}")
    return 0


def _empty_cache(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
