"""Correctness checks for a GPU campaign, needing only torch, triton, numpy and this repository
(no pytest, no hypothesis): the compiled kernels against their torch references at Mixtral-8x7B
shapes, one Mixtral-shape layer with kernels against the torch path, the engine's CUDA paths
(tokens and bytes equal to the CPU's, kernels active, no host sync in draft layers or attention,
the flat pinned arena), and the multi-program moe_align at E = 128, T = 65,536.

    python experiments/gpu_checks.py --out checks.json            # on the GPU
    TRITON_INTERPRET=1 python experiments/gpu_checks.py --dry     # CPU: tiny shapes, interpreter

Prints one PASS/FAIL/SKIP line per check; exit status 1 if any fails. Relative errors are
||out - ref|| / ||ref|| against fp32-math references (bf16 operands: under 1e-2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

CHECKS = []
BF16_TOL = 1e-2


def check(fn):
    CHECKS.append(fn)
    return fn


class Skip(Exception):
    pass


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite output"
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def _rand(*shape, dev, dtype=torch.bfloat16, scale=1.0, g=None):
    return (torch.randn(*shape, generator=g) * scale).to(dev, dtype)


@check
def kernels_match_references(ctx) -> str:
    from specmoe.kernels.attention import attention, attention_reference
    from specmoe.kernels.fused_moe import fused_moe, fused_moe_reference
    from specmoe.kernels.gating import topk_gating, topk_gating_reference
    from specmoe.kernels.rmsnorm import rmsnorm, rmsnorm_reference
    from specmoe.kernels.rope import rope, rope_reference

    dev, dry = ctx["dev"], ctx["dry"]
    g = torch.Generator().manual_seed(0)
    D, Fi, E, k = (64, 96, 8, 2) if dry else (4096, 14336, 8, 2)
    H, Hkv, Dh = (4, 2, 16) if dry else (32, 8, 128)
    out = []
    w13 = _rand(E, 2 * Fi, D, dev=dev, scale=D ** -0.5, g=g)
    w2 = _rand(E, D, Fi, dev=dev, scale=Fi ** -0.5, g=g)
    for T, drop in ((1, ()), (64, (3,)), (512, (0, 5))) if not dry else ((1, ()), (9, (3,))):
        x = _rand(T, D, dev=dev, g=g)
        tw, ids = topk_gating_reference(torch.randn(T, E, generator=g).to(dev), k)
        slot = torch.arange(E, dtype=torch.int32)
        slot[list(drop)] = -1
        slot = slot.to(dev)
        err = rel_err(
            fused_moe(x, w13, w2, tw, ids, slot), fused_moe_reference(x, w13, w2, tw, ids, slot)
        )
        assert err < BF16_TOL, f"fused_moe T={T}: rel err {err:.2e}"
        out.append(f"fused_moe T={T} {err:.1e}")
    for B, S, Q in ((4, 4096, 1), (4, 4096, 5)) if not dry else ((2, 40, 1), (2, 40, 3)):
        q = _rand(B, Q, H, Dh, dev=dev, g=g)
        kc, vc = _rand(B, S + Q, Hkv, Dh, dev=dev, g=g), _rand(B, S + Q, Hkv, Dh, dev=dev, g=g)
        lens = torch.randint(S // 2, S, (B,), generator=g).to(dev, torch.int32)
        err = rel_err(attention(q, kc, vc, lens), attention_reference(q, kc, vc, lens))
        assert err < BF16_TOL, f"attention B={B} S={S} Q={Q}: rel err {err:.2e}"
        out.append(f"attention Q={Q} {err:.1e}")
    x, wt = _rand(64, D, dev=dev, g=g), _rand(D, dev=dev, g=g)
    err = rel_err(rmsnorm(x, wt, 1e-5)[0], rmsnorm_reference(x, wt, 1e-5)[0])
    assert err < BF16_TOL, f"rmsnorm: {err:.2e}"
    q, kk = _rand(64, H, Dh, dev=dev, g=g), _rand(64, Hkv, Dh, dev=dev, g=g)
    pos = torch.randint(0, 4096, (64,), generator=g).to(dev)
    got, ref = rope(q, kk, pos, 1e6), rope_reference(q, kk, pos, 1e6)
    err = max(rel_err(a, b) for a, b in zip(got, ref))
    assert err < BF16_TOL, f"rope: {err:.2e}"
    for Eg, kg in ((8, 2), (128, 8)):
        logits = torch.randn(256, Eg, generator=g).to(dev)
        (w, i), (wr, ir) = topk_gating(logits, kg), topk_gating_reference(logits, kg)
        assert torch.equal(i.long(), ir.long()) and rel_err(w, wr) < 1e-5, f"gating E={Eg}"
    return ", ".join(out) + ", rmsnorm, rope, gating ok"


@check
def moe_align_parallel_at_scale(ctx) -> str:
    from specmoe.kernels.moe_align import moe_align_block_size, moe_align_block_size_reference

    dev, dry = ctx["dev"], ctx["dry"]
    E, T, k = (128, 300, 8) if dry else (128, 65536, 8)
    g = torch.Generator().manual_seed(1)
    ids = (
        torch.argsort(torch.rand(T, E, generator=g), dim=1)[:, :k].to(dev, torch.int32).contiguous()
    )
    slot = torch.randperm(E, generator=g).to(torch.int32)
    slot[:3] = -1
    slot = slot.to(dev)
    times = {}
    for par in (True, False):
        a = moe_align_block_size(ids, 16, E, slot, check_values=False, parallel=par)
        _sync(dev)
        t = time.perf_counter()
        a = moe_align_block_size(ids, 16, E, slot, check_values=False, parallel=par)
        _sync(dev)
        times[par] = time.perf_counter() - t
        r = moe_align_block_size_reference(ids, 16, E, slot)
        for f in ("sorted_token_ids", "block_expert", "block_slot", "num_tokens_post_padded"):
            assert torch.equal(getattr(a, f), getattr(r, f)), f"parallel={par}: {f} differs"
    return (f"E={E} T={T} k={k}: equal to the reference; {times[True] * 1e3:.2f} ms parallel, "
            f"{times[False] * 1e3:.2f} ms one program (host-timed, after a warm call)")


@check
def mixtral_layer_kernels_match_torch(ctx) -> str:
    """One Mixtral-8x7B-shape layer, every expert resident: kernels vs the torch path. fp32, so
    that near-tied router logits cannot flip a token's experts between the two paths (bf16
    numerics are kernels_match_references' job); fp32 dots are exact ("ieee") on both paths."""
    from specmoe.engine import ops
    from specmoe.engine.config import MoEConfig
    from specmoe.engine.model import KVCache, Transformer
    from specmoe.engine.moe import ResidentExperts
    from specmoe.engine.weights import random_model

    dev, dry = ctx["dev"], ctx["dry"]
    shape = ({"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "expert_ffn": 96,
              "vocab": 128} if dry else
             {"hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128, "expert_ffn": 14336,
              "vocab": 32000, "rope_theta": 1e6})
    cfg = MoEConfig(layers=1, experts=8, top_k=2, max_seq_len=256, max_batch=4, dtype="float32",
                    **shape)
    w = random_model(cfg, seed=0, init_device=dev if dev == "cuda" else None)
    toks = torch.randint(0, cfg.vocab, (4, 40), generator=torch.Generator().manual_seed(0))
    res = {}
    for flag in ("1", "0"):
        os.environ["SPECMOE_ENGINE_TRITON"] = flag
        ops._checked.clear()
        m = Transformer(cfg, w.dense, ResidentExperts(cfg, w.experts, dev), dev)
        cache = KVCache(cfg, 4, cfg.max_seq_len, dev)
        pre = m.logits(m.forward(toks[:, :35], cache, "prefill"))
        cache.lengths[:4] = 35
        ver = m.logits(m.forward(toks[:, 35:], cache, "verify"))
        res[flag] = (pre, ver, ops.active_kernels())
    os.environ.pop("SPECMOE_ENGINE_TRITON")
    assert {k.split("@")[0] for k in res["1"][2]} == set(ops.KERNELS), res["1"][2]
    errs = [rel_err(a, b) for a, b in zip(res["1"][:2], res["0"][:2])]
    assert max(errs) < 1e-3, f"logits rel err {errs}"
    return f"prefill / verify logits rel err {errs[0]:.1e} / {errs[1]:.1e}, kernels {res['1'][2]}"


def _tiny(dtype="float64", **kw):
    from specmoe.engine.config import MoEConfig

    base = {"hidden": 64, "layers": 3, "heads": 4, "kv_heads": 2, "head_dim": 16, "experts": 8,
            "top_k": 2, "expert_ffn": 64, "vocab": 96, "max_seq_len": 48, "max_batch": 4,
            "dtype": dtype}
    return MoEConfig(**{**base, **kw})


@check
def engine_cuda_matches_cpu(ctx) -> str:
    from specmoe.engine.generate import Engine
    from specmoe.engine.weights import random_model

    from specmoe.inputs.policies import make_policy

    if ctx["dev"] != "cuda":
        raise Skip("needs CUDA (the CPU is the reference)")
    w = random_model(_tiny(), seed=0)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 40, 41], [3, 3, 3, 3]]
    done = []
    for name, kw in (("ondemand", {}), ("overlap", {}), ("caching", {"resident_experts": 2}),
                     ("specmoe", {"gamma": 3, "draft_experts": 2})):
        cpu = Engine(w, make_policy(name, **kw)).generate(prompts, 12)
        gpu = Engine(w, make_policy(name, **kw), device="cuda").generate(prompts, 12)
        assert gpu.tokens == cpu.tokens, f"{name}: tokens differ"
        assert gpu.stats.bytes_by_link == cpu.stats.bytes_by_link, f"{name}: bytes differ"
        done.append(name)
    return "fp64 tokens and bytes equal for " + ", ".join(done)


@check
def engine_runs_kernels_and_no_draft_sync(ctx) -> str:
    """bf16 SpecMoE: every kernel active after the run; with CUDA's sync debug mode at 'error',
    draft layers and attention blocks run (a host sync there would raise)."""
    from specmoe.engine.generate import Engine
    from specmoe.engine.tracer import Tracer
    from specmoe.engine.weights import random_model

    from specmoe.inputs.policies import make_policy

    if ctx["dev"] != "cuda":
        raise Skip("needs CUDA (tests/test_engine_syncs.py counts host reads on the CPU)")
    cfg = _tiny("bfloat16", hidden=256, expert_ffn=512, experts=16, max_batch=8, max_seq_len=64)
    tracer = Tracer("cuda")
    eng = Engine(random_model(cfg, seed=1, pin=True),
                 make_policy("specmoe", gamma=3, draft_experts=4), device="cuda", tracer=tracer)
    prompts = [[1, 2, 3, 4]] * 8
    eng.generate(prompts, 6, synthetic_acceptance=0.6)  # warm-up: compiles, probes
    watched = []

    def strict(obj, method, is_hot):
        orig = getattr(obj, method)

        def run(*a, **k):
            if not is_hot(a, k):
                return orig(*a, **k)
            watched.append(method)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return orig(*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        setattr(obj, method, run)
    strict(eng.provider, "moe", lambda a, k: a[4] == "draft")
    strict(eng.model, "_attention", lambda a, k: True)
    res = eng.generate(prompts, 10, synthetic_acceptance=0.6)
    kernels = tracer.header["engine"]["kernels"]
    assert {k.split("@")[0] for k in kernels} >= {"rmsnorm", "attention", "fused_moe"}
    assert all(b.is_pinned() for b in eng.store.host), "expert buffers not pinned"
    return (f"{watched.count('moe')} draft layers, {watched.count('_attention')} attention "
            f"blocks without a sync; {res.stats.tokens_per_s:.0f} tok/s; kernels {kernels}")


@check
def draft_cuda_graph(ctx) -> str:
    """SpecMoE's greedy draft step captured in a CUDA graph: fp32 tokens equal the eager ones;
    bf16 tokens/s with and without graphs (synthetic acceptance 0.7, so drafts do not change
    the accepted counts)."""
    from specmoe.engine.generate import Engine
    from specmoe.engine.weights import random_model

    from specmoe.inputs.policies import make_policy

    if ctx["dev"] != "cuda":
        raise Skip("needs CUDA (tests/test_engine_syncs.py runs the captured body on the CPU)")
    pol = make_policy("specmoe", gamma=4, draft_experts=4)
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [10]] * 2
    cfg = _tiny("float32", hidden=128, expert_ffn=256, experts=16, max_batch=8)
    w = random_model(cfg, seed=2, pin=True)
    eager = Engine(w, pol, device="cuda", cuda_graphs=False).generate(prompts, 12).tokens
    eng = Engine(w, pol, device="cuda", cuda_graphs=True)
    graph = eng.generate(prompts, 12).tokens
    assert eng.graphs.graphs.get(8) is not None, "capture fell back to eager (see warnings)"
    assert graph == eager, "graph drafts differ from eager drafts"
    cfg = _tiny("bfloat16", hidden=1024, expert_ffn=2048, experts=8, layers=4, max_batch=32,
                max_seq_len=96)
    w = random_model(cfg, seed=3, pin=True, init_device="cuda")
    speed = {}
    for on in (False, True):
        e = Engine(w, pol, device="cuda", cuda_graphs=on)
        e.generate(prompts * 4, 8, synthetic_acceptance=0.7)
        speed[on] = e.generate(prompts * 4, 32, synthetic_acceptance=0.7).stats.tokens_per_s
    return (f"fp32 tokens equal; bf16 4 layers batch 32: {speed[False]:.0f} tok/s eager, "
            f"{speed[True]:.0f} tok/s with the draft step in a graph")


@check
def pinned_arena(ctx) -> str:
    import mmap

    from specmoe.engine.weights import arena_of, random_model

    if ctx["dev"] != "cuda":
        raise Skip("page-locking needs CUDA (tests/test_engine_memory.py checks the arena)")
    cfg = _tiny("bfloat16", hidden=1024, expert_ffn=3584, layers=4)
    w = random_model(cfg, seed=0, pin=True, init_device="cuda")
    arena = arena_of(w.experts)
    need = cfg.layers * cfg.experts * cfg.expert_params * 2
    assert arena is not None and all(b.is_pinned() for b in w.experts)
    assert len(arena) == -(-need // mmap.PAGESIZE) * mmap.PAGESIZE
    dst = torch.empty_like(w.experts[1], device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        dst.copy_(w.experts[1], non_blocking=True)
    s.synchronize()
    assert torch.equal(dst.cpu(), w.experts[1])
    return f"{len(arena)} bytes for {need} needed, pinned, async copy exact"


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dry", action="store_true", help="CPU: tiny shapes under the interpreter")
    ap.add_argument("--only", help="comma-separated check names")
    a = ap.parse_args(argv)
    from specmoe.kernels import _runtime as rt

    if a.dry and not rt.interpreting():
        raise SystemExit("--dry runs the kernels under the interpreter: set TRITON_INTERPRET=1")
    if not a.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry (with TRITON_INTERPRET=1) on a CPU")
    ctx = {"dev": "cpu" if a.dry else "cuda", "dry": a.dry}
    rows, failed = [], 0
    for fn in CHECKS:
        if a.only and fn.__name__ not in a.only.split(","):
            continue
        t = time.perf_counter()
        try:
            status, detail = "PASS", fn(ctx)
        except Skip as exc:
            status, detail = "SKIP", str(exc)
        except Exception as exc:  # noqa: BLE001 - report every check
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            failed += 1
        dt = time.perf_counter() - t
        rows.append({"check": fn.__name__, "status": status, "detail": detail, "seconds": dt})
        print(f"{status} {fn.__name__} ({dt:.1f} s): {detail}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": ctx["dev"], "torch": torch.__version__,
                                     "checks": rows}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
