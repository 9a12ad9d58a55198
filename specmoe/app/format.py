"""Numbers as people read them, with an interval and a source when the prediction carries them.

Predictions may carry p10/p50/p90 intervals as flat keys (`tokens_per_s_p10`, `tokens_per_s_p90`)
or nested (`intervals: {tokens_per_s: {p10, p50, p90}}`), and a `provenance` dict (where the GPU
parameters, α and the spreads come from). Terminal tables and HTML pages show whichever exist and
stay quiet about the ones that do not.
"""
from __future__ import annotations

from typing import Any


def interval(d: dict[str, Any], key: str) -> tuple[float, float] | None:
    """(p10, p90) of `key` in a prediction dict, or None where it carries no interval."""
    lo, hi = d.get(f"{key}_p10"), d.get(f"{key}_p90")
    if lo is None or hi is None:
        nested = (d.get("intervals") or {}).get(key) or {}
        lo, hi = nested.get("p10"), nested.get("p90")
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)


def number(v: float | None, digits: int = 1) -> str:
    """1,234.5 style; '-' for None."""
    return "-" if v is None else f"{v:,.{digits}f}"


def with_interval(d: dict[str, Any], key: str, unit: str = "", digits: int = 1) -> str:
    """'1,234.5 tok/s (p10-p90 1,100.0-1,400.0)', or without the bracket when there is no
    interval."""
    v = d.get(key)
    text = number(v, digits) + (f" {unit}" if unit and v is not None else "")
    iv = interval(d, key)
    if iv is not None and v is not None:
        text += f" (p10-p90 {number(iv[0], digits)}-{number(iv[1], digits)})"
    return text


def alpha_text(d: dict[str, Any]) -> str:
    """'α = 0.913 (paper: SpecMoE's published acceptance)': the value and where it came from."""
    alpha = d.get("alpha")
    if alpha is None:
        return "α not used"
    src = d.get("acceptance_source") or (d.get("provenance") or {}).get("alpha_source")
    return f"α = {alpha:.3f}" + (f" ({acceptance_words(src)})" if src else "")


def acceptance_words(source: str | None) -> str:
    """Plain words for an acceptance source name ('paper' is the published SpecMoE table)."""
    if not source:
        return "source not recorded"
    s = str(source)
    if s.startswith(("paper", "SpecMoE arXiv")):
        return f"published by the SpecMoE paper for NLLB-MoE, not measured on this model ({s})"
    if s.startswith("measured"):
        return f"measured on this project's engine ({s})"
    if s == "user":
        return "given by you (--acceptance)"
    return s


def provenance_lines(d: dict[str, Any]) -> list[str]:
    """Where the numbers come from, one short line each: the interval, α and its source, and the
    cost parameters' evidence (empty when the dict carries none of them)."""
    lines = []
    if interval(d, "tokens_per_s") is not None:
        lines.append(
            f"p10-p90: tokens/s {band(d, 'tokens_per_s')}, TPOT ms {band(d, 'tpot_ms', 2)}, "
            f"TTFT ms {band(d, 'ttft_ms', 0)}"
        )
    if d.get("gamma"):
        spread = d.get("alpha_spread")
        lines.append(
            alpha_text(d) + (f", ± {spread:.2f}" if isinstance(spread, (int, float)) else "")
        )
    ev = d.get("evidence") or d.get("provenance") or {}
    if ev.get("ideal"):
        lines.append("--ideal: datasheet roofline efficiencies (an upper bound on speed)")
    elif ev.get("gpu_parameters"):
        lines.append(
            f"GPU parameters: {ev['gpu_parameters']}; host and link: published measurements "
            "or stated priors (hwprofiles)"
        )
        if ev.get("measured_tables"):
            lines.append(f"measured kernel tables: {ev['measured_tables']}")
        if ev.get("op_sources") and not str(ev.get("measured_tables", "")).startswith("none"):
            ops = ev["op_sources"].items()
            lines.append("ops from: " + " | ".join(f"{k}: {v}" for k, v in ops))
        if ev.get("interval"):
            lines.append(f"interval: {ev['interval']}")
        if ev.get("spreads"):
            lines.append(
                "spreads (σ of log): " + ", ".join(f"{k} {v:.2f}" for k, v in ev["spreads"].items())
            )
    return lines


def band(d: dict[str, Any], key: str, digits: int = 1) -> str:
    """"p10-p90" of a predicted number, "-" where it has no interval."""
    iv = interval(d, key)
    return "-" if iv is None else f"{number(iv[0], digits)}-{number(iv[1], digits)}"


def calibration_words(calibrated: bool, hardware: str, gpu_evidence: str = "") -> str:
    """One sentence on how far the hardware numbers can be trusted. `gpu_evidence`: where the GPU
    parameters came from (the prediction's evidence.gpu_parameters), e.g. carried over."""
    if gpu_evidence.startswith("carried over"):
        return (
            f"Hardware profile {hardware} is not calibrated on its own measurements: its GPU "
            f"parameters are {gpu_evidence}, with a wider spread for the transfer; host and link "
            "come from published measurements or stated priors."
        )
    if calibrated:
        return (
            f"Hardware profile {hardware} is calibrated: its efficiencies were fitted to measured "
            "traces (see the profile's hold-out error)."
        )
    return (
        f"Hardware profile {hardware} is not calibrated on its own measurements: its efficiencies "
        "are published measurements or stated priors, each with a spread that the p10-p90 "
        "interval carries; --ideal gives the datasheet upper bound instead."
    )