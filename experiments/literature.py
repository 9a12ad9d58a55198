"""Published end-to-end measurements of MoE offloading and speculative decoding, predicted with the
defaults: external validation of the whole model, not a fit.

    python experiments/literature.py [--out experiments/reports]

Every row is a published figure with its source (paper or repository, table or figure) and how it
was taken from it: "stated" (a number printed in a table or text), "derived" (arithmetic on stated
numbers, shown) or "read off a figure" (bar height, with the reading resolution as its spread).
Each is predicted by `specmoe.predict` with the repository's default profiles and parameters:
nothing here is tuned to these numbers. Where the source leaves a setting open (host CPU, prompt
length, routing) the row says what was assumed. The policy is the specmoe policy closest to the
published system (DESIGN.md §6); systems whose mechanism specmoe does not model (quantised experts,
whole-layer weight streaming) are listed as not predicted, with the reason.

Writes OUT/literature.md (atomically).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import specmoe
from specmoe.inputs.models import load_model

HERE = Path(__file__).resolve().parent
MOE_INFINITY = (
    "MoE-Infinity README, 'Performance' table (single A5000 24 GB, per-token latency in s, "
    "FP16, mixed LongBench/GSM8K/FLAN/BIG-Bench/MMLU prompts), github.com/EfficientMoE/"
    "MoE-Infinity commit 00181f1"
)
MOE_INFINITY_LEGACY = MOE_INFINITY.replace("'Performance' table", "'Legacy comparison' table")
SPECMOE = "SpecMoE, arXiv 2604.10152 (figures as transcribed in experiments/reproduce_specmoe.py)"
FIDDLER = (
    "Fiddler README benchmark figure (github.com/efeslab/fiddler asset/results.png, the "
    "single-batch figure of arXiv 2402.07033v1), Environment 2: L4 24 GB + 32-core Intel "
    "Cascade Lake"
)


@dataclass(frozen=True)
class Published:
    """One published end-to-end figure and the specmoe configuration that stands for it."""

    system: str  # the published system (its name)
    model: str  # specmoe catalog name
    hardware: str  # specmoe system profile
    gpu: str  # as published
    host: str  # as published, or "not stated"
    batch: int
    tokens_per_s: float  # published (decode) tokens/s
    how: str  # stated | derived: ... | read off a figure (±x)
    source: str
    policy: str  # the closest specmoe policy
    kwargs: dict = field(default_factory=dict)  # gamma, draft_experts, prompt_len, output_len, ...
    spread: float = 0.0  # relative uncertainty of the published figure itself (figure reading)
    assumed: str = ""  # settings the source leaves open


ROWS = [
    Published(
        "SpecMoE (γ=10, N=4, HotTemporal)",
        "nllb-moe-54b",
        "specmoe-paper-h100",
        "H100 96 GB, PCIe 5",
        "1 TB DDR5",
        256,
        123.0,
        "stated",
        SPECMOE,
        "specmoe",
        {"gamma": 10, "draft_experts": 4, "draft_set": "hottemporal", "acceptance": "paper"},
        assumed="prompt 512 / output 256; uniform routing; host CPU Sapphire Rapids class",
    ),
    Published(
        "MoE-OnDemand (SpecMoE's baseline)",
        "nllb-moe-54b",
        "specmoe-paper-h100",
        "H100 96 GB, PCIe 5",
        "1 TB DDR5",
        256,
        round(123.0 / 4.30, 1),
        "derived: 123.0 tokens/s / 4.30× speed-up",
        SPECMOE,
        "ondemand",
        {"gamma": 0, "draft_experts": 0},
        assumed="prompt 512 / output 256; uniform routing",
    ),
    Published(
        "MoE-Infinity",
        "mixtral-8x7b",
        "rtx-a5000",
        "RTX A5000 24 GB",
        "not stated",
        1,
        round(1 / 0.735, 3),
        "derived: 1 / 0.735 s per token",
        MOE_INFINITY,
        "caching",
        {"gamma": 0, "draft_experts": 0},
        assumed="host DDR4 server; prompt 512 / output 256; uniform routing",
    ),
    Published(
        "MoE-Infinity",
        "deepseek-v2-lite",
        "rtx-a5000",
        "RTX A5000 24 GB",
        "not stated",
        1,
        round(1 / 0.100, 3),
        "derived: 1 / 0.100 s per token",
        MOE_INFINITY,
        "caching",
        {"gamma": 0, "draft_experts": 0},
        assumed="host DDR4 server; prompt 512 / output 256; uniform routing",
    ),
    Published(
        "MoE-Infinity",
        "qwen3-30b-a3b",
        "rtx-a5000",
        "RTX A5000 24 GB",
        "not stated",
        1,
        round(1 / 0.150, 3),
        "derived: 1 / 0.150 s per token",
        MOE_INFINITY,
        "caching",
        {"gamma": 0, "draft_experts": 0},
        assumed="host DDR4 server; prompt 512 / output 256; uniform routing",
    ),
    Published(
        "MoE-Infinity",
        "nllb-moe-54b",
        "rtx-a5000",
        "RTX A5000 24 GB",
        "not stated",
        1,
        round(1 / 0.119, 3),
        "derived: 1 / 0.119 s per token",
        MOE_INFINITY_LEGACY,
        "caching",
        {"gamma": 0, "draft_experts": 0},
        assumed="host DDR4 server; prompt 512 / output 256; uniform routing",
    ),
    Published(
        "Fiddler",
        "mixtral-8x7b",
        "l4",
        "L4 24 GB",
        "32-core Intel Cascade Lake",
        1,
        3.9,
        "read off a figure (±0.1): [16 input, 512 output] bar",
        FIDDLER,
        "cpu",
        {"gamma": 0, "draft_experts": 0, "prompt_len": 16, "output_len": 512},
        spread=0.1 / 3.9,
        assumed=(
            "host profile ddr4-server (80-core Ice Lake; the paper's 32-core Cascade Lake SKU is "
            "not stated); uniform routing"
        ),
    ),
]

NOT_PREDICTED = [
    (
        "Mixtral-offloading (Eliseev & Mazur, arXiv 2312.17238)",
        (
            "its figures are for mixed HQQ quantisation, "
            "separate schemes for attention and experts (github.com/dvmazur/mixtral-offloading "
            "README); specmoe's model shapes have one weight dtype"
        ),
    ),
    (
        (
            "DeepSpeed-MII / DeepSpeed ZeRO-Inference, Accelerate, vLLM cpu-offload (baselines in "
            "MoE-Infinity's and Fiddler's tables)"
        ),
        "stream whole layers' weights, every expert included; no specmoe policy moves that",
    ),
    (
        "MoE-Lightning (arXiv 2411.11217), HOBBIT, AdapMoE, ProMoE, SP-MoE, Pre-gated MoE",
        (
            "no table or stated figure with tokens/s, GPU, host and batch was found in this "
            "session's search of stored pages and repositories; none is quoted from memory"
        ),
    ),
]


def predict(row: Published) -> dict:
    kw = {"prompt_len": 512, "output_len": 256, **row.kwargs}
    return specmoe.predict(
        model=row.model, hardware=row.hardware, policy=row.policy, batch=row.batch, **kw
    )


def evaluate(row: Published) -> dict:
    p = predict(row)
    tps = p["tokens_per_s"]
    lo, hi = p.get("tokens_per_s_p10"), p.get("tokens_per_s_p90")
    pub_lo, pub_hi = row.tokens_per_s * (1 - row.spread), row.tokens_per_s * (1 + row.spread)
    inside = None if lo is None else bool(lo <= pub_hi and pub_lo <= hi)
    return {
        "row": row,
        "predicted": tps,
        "p10": lo,
        "p90": hi,
        "fits": p["fits"],
        "error": (tps / row.tokens_per_s - 1.0) if tps else None,
        "inside": inside,
        "calibrated": p.get("calibrated"),
        "alpha_source": p.get("acceptance_source"),
    }


def _fmt(v, digits=1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def markdown(results: list[dict]) -> str:
    errs = sorted(abs(r["error"]) for r in results if r["error"] is not None)
    median = errs[len(errs) // 2] if errs else None
    with_iv = [r for r in results if r["inside"] is not None]
    lines = [
        "# Published end-to-end measurements vs specmoe's defaults",
        "",
        (
            "Generated by `python experiments/literature.py` (do not edit by hand). Predictions: "
            "`specmoe.predict` (analytic model) with the shipped default profiles; no parameter is "
            "fitted to these figures."
        ),
        "",
        f"Summary: {len(results)} published figures; median |error| {_fmt(100 * median, 0)}%; "
        + (
            f"{sum(r['inside'] for r in with_iv)} of {len(with_iv)} inside the p10–p90 interval."
            if with_iv
            else "no prediction interval available in this version (point predictions only)."
        ),
        "",
        (
            "| published system | model | GPU | host | batch | published tokens/s | how taken | "
            "specmoe policy | predicted tokens/s | p10–p90 | error | inside |"
        ),
        "|---|---|---|---|---:|---:|---|---|---:|---|---:|---|",
    ]
    for r in results:
        row = r["row"]
        iv = "—" if r["p10"] is None else f"{_fmt(r['p10'])}–{_fmt(r['p90'])}"
        err = "—" if r["error"] is None else f"{100 * r['error']:+.0f}%"
        inside = "—" if r["inside"] is None else ("yes" if r["inside"] else "no")
        pred = _fmt(r["predicted"], 2) if r["fits"] else "does not fit"
        lines.append(
            f"| {row.system} | {row.model} | {row.gpu} | {row.host} | {row.batch} | "
            f"{row.tokens_per_s:,.2f} | {row.how} | {row.policy} | {pred} | {iv} | {err} | "
            f"{inside} |"
        )
    lines += ["", "Sources and assumptions:", ""]
    for i, r in enumerate(results, 1):
        row = r["row"]
        lines.append(
            f"{i}. {row.system}, {row.model}: {row.source}. Assumed: {row.assumed or 'nothing'}. "
            f"specmoe configuration: {row.policy} {row.kwargs}."
        )
    lines += ["", "Published figures not predicted:", ""]
    lines += [f"- {name}: {why}." for name, why in NOT_PREDICTED]
    lines += ["", "## What the errors say", "", *_reading(results)]
    return "\n".join(lines) + "\n"


def _reading(results: list[dict]) -> list[str]:
    """Observations computed from the rows (no hand-typed numbers)."""
    out = []
    by = {(r["row"].system, r["row"].model): r for r in results}
    mi = [r for r in results if r["row"].system == "MoE-Infinity" and r["error"] is not None]
    if mi:
        experts = {r["row"].model: load_model(r["row"].model).num_experts for r in mi}
        coarse = [r for r in mi if experts[r["row"].model] <= 8]
        fine = [r for r in mi if experts[r["row"].model] > 8]
        line = (
            "- MoE-Infinity on one A5000: "
            + "; ".join(
                f"{r['row'].model} ({experts[r['row'].model]} experts per layer) "
                f"{100 * r['error']:+.0f}%"
                for r in mi
            )
            + "."
        )
        if coarse and fine:
            worst_coarse = max(abs(r["error"]) for r in coarse)
            best_fine = min(abs(r["error"]) for r in fine)
            if best_fine > worst_coarse:
                line += (
                    " Every fine-grained model (> 8 experts per layer) is off by more "
                    f"({best_fine:.0%} or more) than the 8-expert one ({worst_coarse:.0%}). A "
                    "candidate cause, not tested here: they move many small experts, where fixed "
                    "per-copy and per-kernel costs weigh most."
                )
        out.append(line)
    s = by.get(("SpecMoE (γ=10, N=4, HotTemporal)", "nllb-moe-54b"))
    o = by.get(("MoE-OnDemand (SpecMoE's baseline)", "nllb-moe-54b"))
    if s and o and s["predicted"] and o["predicted"]:
        out.append(
            "- SpecMoE's testbed: SpecMoE is predicted "
            f"{s['predicted'] / s['row'].tokens_per_s:.1f}× its published throughput and OnDemand "
            f"{o['predicted'] / o['row'].tokens_per_s:.1f}×; the ratio SpecMoE / OnDemand is "
            f"{s['predicted'] / o['predicted']:.2f}× predicted against 4.30× published "
            "(reproduce_specmoe.md accounts for the time per step)."
        )
    f = by.get(("Fiddler", "mixtral-8x7b"))
    if f and f["error"] is not None:
        out.append(
            f"- Fiddler on L4: {100 * f['error']:+.0f}%. The host profile used (ddr4-server: "
            "80-core Ice Lake, 16 channels of DDR4-3200) is larger than the paper's 32-core "
            "Cascade Lake, whose SKU is not stated: the CPU-expert time predicted here is that of "
            "a faster host."
        )
    return out


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "reports"))
    args = ap.parse_args()
    md = markdown([evaluate(r) for r in ROWS])
    path = Path(args.out) / "literature.md"
    write_atomic(path, md)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
