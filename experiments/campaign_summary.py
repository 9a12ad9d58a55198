"""Summary of a GPU campaign's OUTDIR (experiments/gpu_campaign.sh): checks, kernel HBM fractions,
copy bandwidths, end-to-end tokens/s and the quick tune, each against the targets of DESIGN.md §11.
Standard library only (reads the gzip JSONL traces directly), so it runs wherever the campaign did.

    python experiments/campaign_summary.py OUTDIR       # prints, and writes OUTDIR/summary.json
"""
from __future__ import annotations

import gzip
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def read_trace(path: Path) -> tuple[dict, list[dict]]:
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[0], lines[1:]


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def checks(out: Path) -> list[str]:
    data = _load(out / "checks.json")
    if data is None:
        return ["checks: none (step did not finish)"]
    lines = [f"  {c['status']:4s} {c['check']}: {c['detail']}" for c in data["checks"]]
    return [f"checks ({data['device']}):"] + lines


def kernels(out: Path, res: dict) -> list[str]:
    data = _load(out / "kernels.json")
    if data is None:
        return ["kernel benchmarks: none"]
    meta = data["meta"]
    head = (f"kernel benchmarks on {meta['device']} (peaks {meta['peak_tflops']} TFLOP/s, "
            f"{meta['peak_gbps']} GB/s, {meta['peak_source']}):")
    lines = [head]
    decode = []
    for r in data["rows"]:
        lines.append(f"  {r['kernel']:10s} {r['shape']:42s} {r['time_us']:10.1f} us "
                     f"{100 * r['hbm_fraction']:5.1f}% HBM {100 * r['flops_fraction']:5.1f}% bf16")
        if r["kernel"] == "fused_moe" and "tok/expert=" in r["shape"]:
            tpe = int(r["shape"].split("tok/expert=")[1].split()[0])
            if tpe <= 16:
                decode.append(r["hbm_fraction"])
            if tpe >= 2048:
                res["fused_moe_bf16_fraction_large"] = r["flops_fraction"]
    if decode:
        res["fused_moe_hbm_fraction_decode_median"] = statistics.median(decode)
        lines.append(f"  fused MoE at decode sizes (<= 16 tokens/expert): median "
                     f"{100 * statistics.median(decode):.1f}% of HBM peak (target >= 85%)")
    return lines


def copies(out: Path, res: dict) -> list[str]:
    lines = ["copies (median of samples, pinned unless noted):"]
    peak = 0.0
    for name in ("micro-copy.jsonl.gz",):
        p = out / "traces" / name
        if not p.exists():
            return ["copies: none"]
        _, evs = read_trace(p)
        for e in evs:
            gbps = e["bytes"] / (e["dur_us"] * 1e-6) / 1e9
            if e["cat"] == "h2d" and e.get("pinned"):
                peak = max(peak, gbps)
            if e["bytes"] >= 1 << 26 and e.get("chunk") == e["bytes"]:
                lines.append(f"  {e['cat']} {e['bytes'] / 2**20:8.0f} MiB "
                             f"{'pinned' if e.get('pinned') else 'pageable'}: {gbps:6.1f} GB/s")
    res["h2d_pinned_peak_gbps"] = peak
    return lines


def e2e(out: Path, res: dict) -> list[str]:
    runs = sorted((out / "traces" / "e2e").rglob("*.jsonl.gz"))
    if not runs:
        return ["end-to-end: none"]
    tps = defaultdict(list)
    h2d = []
    for p in runs:
        head, evs = read_trace(p)
        pol, st = head["policy"], head.get("result", {})
        key = (pol["name"], head["workload"]["batch"], st.get("gamma", 0))
        tps[key].append(st.get("tokens_per_s", 0.0))
        h2d += [e["bytes"] / (e["dur_us"] * 1e-6) / 1e9 for e in evs
                if e["cat"] == "h2d" and e.get("dur_us", 0) > 0]
    lines = [f"end-to-end ({len(runs)} traces): policy batch gamma -> tokens/s"]
    for (pol, b, g), v in sorted(tps.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        lines.append(f"  {pol:9s} b={b:4d} g={g}: {statistics.median(v):9.1f}")
    for b in sorted({k[1] for k in tps}):
        base = [
            statistics.median(v) for (p, bb, _), v in tps.items() if p == "ondemand" and bb == b
        ]
        spec = [statistics.median(v) for (p, bb, _), v in tps.items() if p == "specmoe" and bb == b]
        if base and spec and base[0] > 0:
            ratio = max(spec) / base[0]
            res.setdefault("specmoe_over_ondemand", {})[b] = ratio
            target = " (target >= 3x at batch >= 128)" if b >= 128 else ""
            lines.append(f"  batch {b}: specmoe (best gamma) / ondemand = {ratio:.2f}x{target}")
    if h2d:
        res["engine_h2d_gbps_median"] = statistics.median(h2d)
        peak = res.get("h2d_pinned_peak_gbps") or 0
        frac = f", {100 * statistics.median(h2d) / peak:.0f}% of the pinned peak" if peak else ""
        lines.append(f"  engine expert fetches: median {statistics.median(h2d):.1f} GB/s{frac} "
                     "(target >= 90%)")
    return lines


def tune(out: Path) -> list[str]:
    data = _load(out / "tune" / "quick_tune.json")
    if data is None:
        return ["quick tune: none"]
    lines = [f"quick tune ({data['device']}):"]
    for r in data["rows"]:
        lines.append(f"  T={r['tokens']:5d} default {r['default_us']:9.1f} us -> best "
                     f"{r['best_us']:9.1f} us ({r['best_gbps']:.0f} GB/s, x{r['speedup']:.2f})")
    return lines


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    res: dict = {}
    lines = checks(out) + kernels(out, res) + copies(out, res) + e2e(out, res) + tune(out)
    print("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
