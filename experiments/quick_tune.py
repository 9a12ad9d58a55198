"""Quick tuning of the fused MoE tile configs at decode sizes (moe_tune.quick_candidates, ~12),
with the default config timed beside the winner so the gain is visible.

    python experiments/quick_tune.py --out DIR [--hidden 4096 --ffn 14336 --experts 8 --top-k 2]
    TRITON_INTERPRET=1 python experiments/quick_tune.py --out DIR --dry    # CPU, tiny shape

Writes DIR/<device>.json in the kernels/configs format (copy it to kernels/configs/ to use it)
and DIR/quick_tune.json: per token count the default's and the best config's median time,
achieved GB/s (weights of the experts with tokens + activations) and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=14336)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--dry", action="store_true", help="tiny shape, 2 candidates (interpreter)")
    a = ap.parse_args(argv)
    from specmoe.kernels import _runtime as rt
    from specmoe.kernels import moe_config
    from specmoe.kernels import moe_tune as mc
    from specmoe.kernels.fused_moe import fused_moe
    from specmoe.kernels.gating import topk_gating

    if not a.dry and rt.interpreting():
        raise SystemExit("unset TRITON_INTERPRET (or pass --dry)")
    D, Fi, E, k = (32, 48, 4, 2) if a.dry else (a.hidden, a.ffn, a.experts, a.top_k)
    cands = mc.quick_candidates()[:2] if a.dry else None
    counts = (1, 4) if a.dry else mc.QUICK_TOKEN_COUNTS
    dtype = torch.float32 if a.dry else torch.bfloat16
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"{rt.device_name()}.json"
    best = mc.tune_fused_moe(E, D, Fi, k, dtype=dtype, quick=True, candidates=cands,
                             token_counts=counts, reps=1 if a.dry else a.reps, path=path)
    dev = "cpu" if rt.interpreting() else "cuda"
    g = torch.Generator().manual_seed(0)
    w13 = (torch.randn(E, 2 * Fi, D, generator=g) * D ** -0.5).to(dev, dtype)
    w2 = (torch.randn(E, D, Fi, generator=g) * Fi ** -0.5).to(dev, dtype)
    slots = torch.arange(E, dtype=torch.int32, device=dev)
    flush = 0 if rt.interpreting() else 256 << 20
    rows = []
    for T in counts:
        x = torch.randn(T, D, generator=g).to(dev, dtype)
        w, ids = topk_gating(torch.randn(T, E, generator=g).to(dev), k)
        used = len(set(ids.flatten().tolist()))
        nbytes = used * 3 * D * Fi * x.element_size() + 2 * T * D * x.element_size()
        t = {}
        for label, cfg in (("default", moe_config.default_config(T, E, k)), ("best", best[T])):
            times = rt.time_fn(lambda cfg=cfg, x=x, w=w, ids=ids: fused_moe(
                x, w13, w2, w, ids, slots, config=cfg, check_values=False),
                               reps=1 if a.dry else a.reps, warmup=0 if a.dry else 2,
                               flush_bytes=flush)
            t[label] = statistics.median(times)
        rows.append({"tokens": T, "experts_used": used, "bytes": nbytes,
                     "default_us": t["default"] * 1e6, "best_us": t["best"] * 1e6,
                     "best_gbps": nbytes / t["best"] / 1e9, "speedup": t["default"] / t["best"],
                     "best_config": best[T]})
        print(
            f"T={T:5d}: default {t['default'] * 1e6:9.1f} us, best {t['best'] * 1e6:9.1f} us "
            f"({nbytes / t['best'] / 1e9:7.1f} GB/s, x{t['default'] / t['best']:.2f})",
            flush=True,
        )
    (a.out / "quick_tune.json").write_text(
        json.dumps(
            {
                "device": rt.device_name(),
                "shape": {"hidden": D, "ffn": Fi, "experts": E, "top_k": k, "dtype": str(dtype)},
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {path} and {a.out / 'quick_tune.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
