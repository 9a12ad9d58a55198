"""Spreads measured on public kernel tables: specmoe.costs.evidence.CARRY_OVER_SPREADS (what a
carried-over GPU profile adds, per op class) and TABLE_SPREAD (a measured table's interpolation
error).

    python experiments/carry_over.py      (reads experiments/reports/crossgpu.json; instant)

A GPU without its own calibrated profile borrows one of its architecture's. How much worse is a
fit on other GPUs than a fit on the GPU's own rows? crossgpu.json holds, per GPU × backend and op
class, the p90 of |relative error| of the self fit (k-fold hold-out) and of the leave-one-GPU-out
fit and of the fit on the nearest same-die GPU alone (what a carried-over profile is). As σ of
log error, σ = ln(1 + p90) / 1.645 (normal log error); the borrowed profile's extra
σ is sqrt(σ_other² − σ_self²) (0 where the other GPUs did as well). Per op class and kind of
fit, the median over GPU × backend; CARRY_OVER_SPREADS holds per op class the larger of the two
kinds, rounded to 0.01; a parameter takes its op classes' largest (evidence.HOLDOUT_CLASSES).

TABLE_SPREAD: crossgpu.json's column "table" holds the p90 |error| of interpolating each row from
its table neighbours with the row left out; σ = ln(1 + p90) / 1.645 per GPU × backend, the
median per op class, the largest op class's, rounded to 0.01.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

REPORT = Path(__file__).parent / "reports" / "crossgpu.json"
Z90 = 1.6448536269514722   # p90 of |N(0, 1)|


def sigma(p90: float) -> float:
    return math.log1p(p90) / Z90


OTHER_FITS = ("logo", "same_die")


def extra_sigmas(report: dict) -> dict[tuple[str, str], float]:
    """Per (fit, op class): median over GPU × backend of that fit's extra σ over the self fit."""
    per: dict[tuple[str, str], list[float]] = {}
    for cell in report["gpus"].values():
        errs = cell["errors"]
        for fit in OTHER_FITS:
            for op, other in (errs.get(fit) or {}).items():
                own = (errs.get("self") or {}).get(op)
                if own is None or other.get("p90") is None:
                    continue
                extra = max(sigma(other["p90"]) ** 2 - sigma(own["p90"]) ** 2, 0.0)
                per.setdefault((fit, op), []).append(math.sqrt(extra))
    return {k: float(np.median(v)) for k, v in sorted(per.items())}


def carry_over_spreads(report: dict) -> dict[str, float]:
    """Per op class: the larger extra σ of the two kinds of fit, rounded to 0.01."""
    out: dict[str, float] = {}
    for (_, op), s in extra_sigmas(report).items():
        out[op] = max(out.get(op, 0.0), round(s, 2))
    return dict(sorted(out.items()))


def table_sigmas(report: dict) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for cell in report["gpus"].values():
        for op, e in (cell["errors"].get("table") or {}).items():
            if e.get("p90") is not None:
                per.setdefault(op, []).append(sigma(e["p90"]))
    return {op: float(np.median(v)) for op, v in sorted(per.items())}


def table_spread(report: dict) -> float:
    return round(max(table_sigmas(report).values()), 2)


def main() -> None:
    report = json.loads(REPORT.read_text())
    for (fit, op), s in extra_sigmas(report).items():
        print(f"{fit:9s} {op:13s} extra σ of log error over the self fit: {s:.3f}")
    print(f"CARRY_OVER_SPREADS = {carry_over_spreads(report)}")
    for op, s in table_sigmas(report).items():
        print(f"table     {op:13s} σ of log interpolation error (leave-one-out): {s:.3f}")
    print(f"TABLE_SPREAD = {table_spread(report)}")


if __name__ == "__main__":
    main()
