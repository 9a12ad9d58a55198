"""A GPU predicted from another GPU's measured tables, scaled by the cost model's ratio
(specmoe.costs.evidence.DIES; the spread TRANSFER_SPREAD).

    python experiments/table_transfer.py [--rows 150] [--backends vllm sglang trtllm]

A GPU without measured kernel tables borrows those of a GPU with the same die: the latency the
source GPU measured for an op, times the cost model's time for the op on the target GPU over its
time on the source GPU (both as one-op replays, as the tables were measured), with the source
GPU's calibrated profile (hwprofiles/calibrated/<source>-<backend>.yaml): what a GPU with no
data of its own gets. This script holds that prediction against the target GPU's own measured
rows, which it never uses otherwise, for the same-die pairs the public tables cover (H100 ↔
H200, B200 ↔ GB200, B300 ↔ GB300; they differ in memory, clocks and power, not in SM count), and
for a few pairs of different dies, which predictions never carry tables between, to show why.

Every prediction goes through the product's path: CostModel(..., tables=source tables) on the
target GPU, through the op's own method (dense_gemm, fused_moe, decode_attention,
prefill_attention); a row outside the source table's range (CostModel.sources says the model
answered) is not counted. Per op class: median / p90 of |predicted − measured| / measured for
(1) the source table as is (same die = same latency), (2) scaled by the model's ratio, (3) for
reference, crossgpu.json's column (e): the cost model fitted on the same-die GPU's rows alone.

Data: NVIDIA aiconfigurator-core 0.12.0 (Apache-2.0; `pip install 'specmoe[tables]'`).
Writes experiments/reports/table_transfer.md and .json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
from carry_over import sigma
from crossgpu import TABLE_CLASS

from specmoe.costs.ops import CostModel, params_for
from specmoe.costs.tables import Tables, event_entry
from specmoe.errors import SpecMoEError
from specmoe.fit.op_map import op_spec
from specmoe.inputs.hardware import load_system
from specmoe.measure import aiconfigurator as aic

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "experiments" / "reports" / "table_transfer.md"
CROSSGPU = REPO / "experiments" / "reports" / "crossgpu.json"
SAME_DIE = (("h100_sxm", "h200_sxm"), ("h200_sxm", "h100_sxm"), ("b200_sxm", "gb200"),
            ("gb200", "b200_sxm"), ("b300_sxm", "gb300"), ("gb300", "b300_sxm"))
OTHER_DIE = (("h100_sxm", "a100_sxm"), ("h100_sxm", "l40s"), ("h100_sxm", "b200_sxm"),
             ("b200_sxm", "b300_sxm"))
CLASSES = {"gemm": "dense GEMM", "moe": "fused MoE", "attn_decode": "decode attention",
           "attn_prefill": "prefill attention"}


def op_time(ev: dict, system, params, tables: Tables) -> tuple[float, bool]:
    """(seconds, answered by the table) of one measured event on `system` via the product."""
    op, _, x = event_entry(ev)
    s = ev["shape"]
    if op == "gemm":
        cm = CostModel(op_spec(2.0), system, params, replay=True, tables=tables)
        t = cm.dense_gemm(*s)
    elif op == "moe":
        spec = op_spec(2.0, hidden=s[1], ffn=s[2], experts=ev["num_experts"],
                       top_k=ev["top_k"], gated=ev.get("gated") is not False)
        cm = CostModel(spec, system, params, replay=True, tables=tables)
        t = cm.fused_moe(ev["tokens"], ev["experts"], ev["max_expert_tokens"],
                         ev.get("distribution", "balanced"))
    else:
        batch, q, ctx, heads, kv, hd = s
        spec = op_spec(2.0, hidden=heads * hd, heads=heads, kv_heads=kv, head_dim=hd)
        cm = CostModel(spec, system, params, replay=True, tables=tables)
        t = cm.prefill_attention(batch, q) if op == "attn_prefill" else \
            cm.decode_attention(batch, ctx)
    used = next(iter(cm.sources.values()))
    return float(t), used["table"] > 0 and used["model"] == 0


def pair_errors(src: str, dst: str, backend: str, rows: int) -> dict | None:
    """Per op class: |error| of the raw source table and of the scaled one, on dst's rows."""
    try:
        full = aic.import_tables(src, backend)
        sample = aic.import_tables(dst, backend, max_rows=rows)
    except SpecMoEError as e:
        print(f"  skip {src}->{dst}/{backend}: {e}", file=sys.stderr)
        return None
    src_name, dst_name = aic.GPU_PROFILES[src], aic.GPU_PROFILES[dst]
    tables = Tables.from_traces([full])
    tables.meta["gpu"] = src_name
    profile = REPO / "hwprofiles" / "calibrated" / f"{src_name}-{backend}.yaml"
    params = params_for(load_system(str(profile)))
    target = load_system(dst_name)
    errs: dict[str, dict[str, list[float]]] = {}
    for ev in sample.events:
        e = event_entry(ev)
        if e is None:
            continue
        op, key, x = e
        raw = tables.at(op, key, x)
        if not np.isfinite(raw):
            continue
        t, from_table = op_time(ev, target, params, tables)
        if not from_table:
            continue
        measured = ev["dur_us"] * 1e-6
        cell = errs.setdefault(op, {"raw": [], "scaled": []})
        cell["raw"].append(abs(raw / measured - 1))
        cell["scaled"].append(abs(t / measured - 1))
    return {op: {k: _stats(v) for k, v in d.items()} for op, d in errs.items()}


def _stats(e: list[float]) -> dict:
    a = np.asarray(e)
    return {"median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)), "n": int(a.size)}


def transfer_spread(results: dict) -> tuple[float, dict[str, float]]:
    """σ of log error from each same-die cell's p90 (scaled), the median per op class over
    pairs × backends; the largest class's, rounded to 0.01."""
    per: dict[str, list[float]] = {}
    for cell in results["same_die"].values():
        for op, e in cell.items():
            per.setdefault(op, []).append(sigma(e["scaled"]["p90"]))
    meds = {op: float(np.median(v)) for op, v in sorted(per.items())}
    return round(max(meds.values()), 2), meds


def run(args) -> dict:
    results: dict = {"same_die": {}, "other_die": {}}
    for be in args.backends:
        for group, pairs in (("same_die", SAME_DIE), ("other_die", OTHER_DIE)):
            for src, dst in pairs:
                t0 = time.time()
                r = pair_errors(src, dst, be, args.rows)
                if r is not None:
                    results[group][f"{src}->{dst}/{be}"] = r
                print(f"{src}->{dst}/{be}: {time.time() - t0:.0f} s", file=sys.stderr)
    return results


def _cell(s) -> str:
    return "–" if not s else f"{100 * s['median']:.1f} / {100 * s['p90']:.0f}"


# the fitted model alone, for reference: crossgpu.json's fit on the same-die GPU (column e), or
# for other dies its leave-one-GPU-out fit (column d)
REFERENCE = {"same_die": ("same_die", "fitted on the source GPU (crossgpu e)"),
             "other_die": ("logo", "fitted on the other GPUs (crossgpu d)")}


def _fitted(crossgpu: dict, name: str, op: str, method: str):
    dst, be = name.split("->")[1].split("/")
    cell = crossgpu.get("gpus", {}).get(f"{dst}/{be}", {})
    return (cell.get("errors", {}).get(method) or {}).get(TABLE_CLASS[op])


def _rows(results: dict, group: str, crossgpu: dict) -> list[str]:
    method, label = REFERENCE[group]
    lines = ["| source → target / backend | op class | rows | (1) source table as is | "
             f"(2) × model ratio | (3) {label} |",
             "|---|---|---:|---:|---:|---:|"]
    for name, cell in results[group].items():
        for op, label in CLASSES.items():
            if op not in cell:
                continue
            e = cell[op]
            fitted = _fitted(crossgpu, name, op, method)
            lines.append(f"| {name} | {label} | {e['scaled']['n']} | {_cell(e['raw'])} | "
                         f"{_cell(e['scaled'])} | {_cell(fitted)} |")
    return lines


def _overall(results: dict, group: str) -> list[str]:
    lines = ["| op class | (1) as is | (2) × model ratio |", "|---|---:|---:|"]
    for op, label in CLASSES.items():
        cells = [c[op] for c in results[group].values() if op in c]
        if not cells:
            continue
        row = [f"{100 * np.median([c[k]['median'] for c in cells]):.1f} / "
               f"{100 * np.median([c[k]['p90'] for c in cells]):.0f}" for k in ("raw", "scaled")]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines


def markdown(results: dict) -> str:
    crossgpu = json.loads(CROSSGPU.read_text()) if CROSSGPU.exists() else {}
    spread, per_op = transfer_spread(results)
    lines = [
        "# A GPU predicted from its same-die partner's measured tables", "",
        f"Command: `{results['command']}` ({results['date']}, {results['elapsed_s'] / 60:.0f} min "
        "on the 2-core CPU machine; no GPU needed: the measurements are public tables).", "",
        f"Data: {aic.ATTRIBUTION}; bf16, single GPU. {results['rows']} rows per op class of the "
        "target GPU (seeded random subset, the same as crossgpu.py's); rows outside the source "
        "table's range are not counted.", "",
        "Each cell: median / p90 of |predicted − measured| / measured, in %. (1) the source GPU's "
        "measured latency as is; (2) that latency × the cost model's time on the target GPU / "
        "its time on the source GPU, with the source GPU's calibrated profile (what predictions "
        "do for a GPU without tables of its own: specmoe.costs.evidence.DIES); (3) for "
        "reference, the cost model alone (experiments/reports/crossgpu.md): fitted on the "
        "same-die GPU's rows (column e), or for other dies on every other GPU's (column d).",
        "",
        "## Same die (what predictions use)", "", *_rows(results, "same_die", crossgpu), "",
        "Median over pairs × backends of each cell's median (and p90):", "",
        *_overall(results, "same_die"), "",
        f"TRANSFER_SPREAD = {spread} (σ of log error from each cell's p90 of (2), the median "
        "per op class over pairs × backends: " +
        ", ".join(f"{CLASSES[k]} {v:.3f}" for k, v in per_op.items()) +
        "; the largest, rounded). Predictions add it in quadrature to TABLE_SPREAD for tables "
        "carried from a same-die GPU.", "",
        "## Different dies (never carried: for comparison only)", "",
        *_rows(results, "other_die", crossgpu), "",
        *_overall(results, "other_die"), "",
        "## Reading it", "", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """\
- The same-die pairs differ in memory bandwidth (H100 3.35 vs H200 4.8 TB/s), clocks and power
  (GB200 vs B200, GB300 vs B300), never in SM count: the carried tables' scaling over SM count
  (H100 PCIe's 114 SMs against H100 SXM's 132, A30's 56 against A100's 108) is the cost model's
  wave and tile quantization, not measured here.
- Across dies, kernels differ (Blackwell Ultra's faster softmax in prefill attention, another
  generation's tensor cores): the scaled table is no better than the fitted model there, so
  predictions never carry tables across dies."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=150, help="rows per op class of the target GPU")
    ap.add_argument("--backends", nargs="+", default=list(aic.BACKENDS))
    ap.add_argument("-o", "--out", default=str(REPORT))
    ap.add_argument("--render", action="store_true",
                    help="no predictions: rewrite the markdown from the JSON next to it")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.render:
        out.write_text(markdown(json.loads(out.with_suffix(".json").read_text())))
        print(f"wrote {out}")
        return 0
    given = argv if argv is not None else sys.argv[1:]
    t0 = time.time()
    results = run(args)
    results.update(command=" ".join(["python experiments/table_transfer.py", *given]),
                   date=datetime.date.today().isoformat(), elapsed_s=time.time() - t0,
                   rows=args.rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.write_text(markdown(results))
    print(f"wrote {out}; TRANSFER_SPREAD = {transfer_spread(results)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
