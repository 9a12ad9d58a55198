"""The engine's kernels row for row against a serving stack's measured kernels on the same GPU.

    python experiments/engine_vs_tables.py TRACE [--tables hwprofiles/tables/h200-sxm-vllm.npz]
                                                 [-o report.md]

TRACE: an engine microbenchmark trace (`python -m specmoe.engine.microbench`, the GPU campaign's
traces/micro-ops.jsonl.gz). Every event that is a table op (specmoe.costs.tables.event_entry: a
GEMM m×n×k, a fused MoE of tokens × shape, decode attention batch × context) is looked up in the
measured tables at the same shape, inside their range only; the engine's fused MoE uses a random
router and is compared with the tables' balanced routing (at >= 4 tokens both touch every expert
of Mixtral). Prints, per op class, rows compared and the engine/table time ratio: median, p10 and
p90 (> 1: the engine is slower), then every row. Default tables: those measured on the trace's
CUDA device (same device name).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from specmoe.costs.tables import Tables, event_entry
from specmoe.measure.trace import read_trace

# numpy-only imports: the GPU campaign runs this where pydantic is not installed
TABLES_DIR = Path(__file__).resolve().parents[1] / "hwprofiles" / "tables"
OP_NAMES = {"gemm": "dense GEMM", "moe": "fused MoE", "attn_decode": "decode attention"}


def compare(trace, tables: Tables) -> list[dict]:
    """One row per engine event the tables cover: op, key, axis value, engine and table µs."""
    rows = []
    for ev in trace.events:
        e = event_entry(ev)
        if e is None or ev.get("dur_us", 0) <= 0:
            continue
        op, key, x = e
        if op == "moe":
            key = (*key[:-1], "balanced")
        t = tables.at(op, key, x)
        if np.isfinite(t):
            rows.append({"op": op, "key": key, "x": x, "engine_us": float(ev["dur_us"]),
                         "table_us": t * 1e6})
    return rows


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for op in OP_NAMES:
        r = np.array([x["engine_us"] / x["table_us"] for x in rows if x["op"] == op])
        if r.size:
            out[op] = {"rows": int(r.size), "median": float(np.median(r)),
                       "p10": float(np.percentile(r, 10)), "p90": float(np.percentile(r, 90))}
    return out


def render(rows: list[dict], tables: Tables, trace_path: str) -> str:
    m = tables.meta
    lines = [f"# Engine kernels against {m.get('backend', '?')} {m.get('backend_version', '')} "
             f"on {m.get('device', '?')}", "",
             f"Engine trace: `{trace_path}`. Tables: {tables.source} ({m.get('attribution', '')}).",
             "Ratio = engine time / measured table time at the same shape (> 1: engine slower).",
             "", "| op class | rows | median | p10 | p90 |", "|---|---:|---:|---:|---:|"]
    for op, s in summary(rows).items():
        lines.append(f"| {OP_NAMES[op]} | {s['rows']} | {s['median']:.2f} | {s['p10']:.2f} | "
                     f"{s['p90']:.2f} |")
    lines += ["", "| op | shape key | axis | engine µs | table µs | ratio |",
              "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        key = ", ".join(str(int(k)) if not isinstance(k, str) else k for k in r["key"])
        lines.append(f"| {OP_NAMES[r['op']]} | {key} | {r['x']:g} | {r['engine_us']:.1f} | "
                     f"{r['table_us']:.1f} | {r['engine_us'] / r['table_us']:.2f} |")
    return "\n".join(lines) + "\n"


def default_tables(trace) -> Path:
    """The shipped extract measured on the trace's CUDA device (same device name)."""
    name = (trace.header.get("device") or {}).get("name")
    for path in sorted(TABLES_DIR.glob("*.npz")):
        if Tables.load(path).meta.get("device") == name:
            return path
    raise SystemExit(f"no shipped tables measured on device {name!r}: pass --tables")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--tables", default=None, help="a table extract (.npz); default: the device's")
    ap.add_argument("-o", "--out", default=None, help="write the markdown here too")
    args = ap.parse_args(argv)
    trace = read_trace(args.trace)
    tables = Tables.load(args.tables or default_tables(trace))
    text = render(compare(trace, tables), tables, args.trace)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
