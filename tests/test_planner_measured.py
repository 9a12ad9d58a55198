"""The planning bar of DESIGN.md §11 on this CPU: the planner's γ against the engine's measured
best γ.

Recomputes, from the committed γ sweeps (experiments/data/cpu/gamma_sweep/ and its focus/ follow-up,
measured by `python experiments/planner_vs_measured.py measure` / `focus`), what
experiments/reports/planner_vs_measured_cpu.md reports: per (α, batch), the planner's γ on the
calibrated CPU profile and the measured throughput at that γ relative to the best measured γ.

What is asserted is what this shared 2-vCPU machine supports (see the report):
- the sweep is complete and the committed report matches the traces;
- per (α, batch) the planner's γ reaches the 0.97 bar or is within the noise of the best: its
  median lies within the best γ's range of repeats (the planner, which predicts steady decoding,
  misses the bar at α = 0.7, batch 8, where the engine's 20-token static batch loses its tail);
- the static-batch prediction (specmoe.fit.validate: the same costs plus the rounds of a static
  batch) picks a γ that reaches the 0.97 bar in every cell, and on the quiet follow-up it is
  within STATIC_ERR of every measured point.
"""

import re
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
import planner_vs_measured as pvm

from specmoe.planning.search import compare_with_measured

MIN_REPEATS = 3
STATIC_ERR = 0.10  # measured ≤ 2.3% on the quiet follow-up; its repeats spread ~30%

pytestmark = pytest.mark.skipif(
    not any(pvm.DATA.glob("*/*.jsonl.gz")), reason="gamma sweep traces not committed"
)


@pytest.fixture(scope="module")
def runs():
    return pvm.load_runs()


@pytest.fixture(scope="module")
def rows(runs):
    return pvm.analyse(runs)


@pytest.fixture(scope="module")
def focus_rows():
    if not any(pvm.FOCUS.glob("*/*.jsonl.gz")):
        pytest.skip("focus traces not committed")
    return pvm.analyse(pvm.load_runs(pvm.FOCUS))


def test_sweep_is_complete(rows):
    assert {(a, b) for a in pvm.ALPHAS for b in pvm.BATCHES} == {
        (r["alpha"], r["batch"]) for r in rows
    }
    for r in rows:
        assert tuple(r["points"]) == pvm.GAMMAS, (r["alpha"], r["batch"])
        assert min(p["repeats"] for p in r["points"].values()) >= MIN_REPEATS


def test_runs_are_what_the_sweep_says(runs):
    for r in runs:
        assert r.policy.name == "specmoe" and r.policy.draft_experts == pvm.DRAFT_EXPERTS
        assert (
            r.max_new_tokens == pvm.RUN["max_new_tokens"] and r.prompt_len == pvm.RUN["prompt_len"]
        )
        assert r.header["interference"]["wall_over_cpu"] > 0
        assert Path(r.path).parent.name == pvm.subdir(r.alpha if r.gamma else None)


def test_measured_point_is_median_decode_time(runs, rows):
    r = rows[0]
    g = max(r["points"])
    group = [
        x
        for x in runs
        if x.batch == r["batch"] and x.gamma == g and round(x.alpha, 6) == r["alpha"]
    ]
    want = (
        r["batch"] * (pvm.RUN["max_new_tokens"] - 1) / statistics.median(x.decode_s for x in group)
    )
    assert r["points"][g]["tokens_per_s"] == pytest.approx(want)
    assert r["points"][g]["min"] <= r["points"][g]["tokens_per_s"] <= r["points"][g]["max"]


def _report_rows(text: str) -> list[tuple[float, int, int, int, float]]:
    pat = r"^\| ([0-9.]+) \| (\d+) \| (\d+) \| (\d+) \| ([0-9.]+) \| (?:yes|no) \|"
    found = re.findall(pat, text, re.MULTILINE)
    return [(float(a), int(b), int(p), int(m), float(x)) for a, b, p, m, x in found]


@pytest.mark.artifacts
def test_report_matches_traces(rows, focus_rows):
    """The committed report's summary rows (sweep, then follow-up) are what the traces give now."""
    got = _report_rows(pvm.REPORT.read_text())
    want = [
        (
            r["alpha"],
            r["batch"],
            r["planned_gamma"],
            r["compare"]["best_gamma"],
            r["compare"]["ratio"],
        )
        for r in rows + focus_rows
    ]
    assert [g[:4] for g in got] == [w[:4] for w in want]
    assert [g[4] for g in got] == pytest.approx([w[4] for w in want], abs=6e-4)


@pytest.mark.parametrize("which", ["sweep", "focus"])
def test_planned_gamma_reaches_bar_or_best_repeat_range(which, rows, focus_rows):
    for r in rows if which == "sweep" else focus_rows:
        c, pts = r["compare"], r["points"]
        assert c == compare_with_measured(
            [(g, p["tokens_per_s"]) for g, p in pts.items()], r["planned_gamma"]
        )
        assert (
            c["ratio"] >= pvm.TARGET
            or pts[r["planned_gamma"]]["tokens_per_s"] >= pts[c["best_gamma"]]["min"]
        ), (
            f"α={r['alpha']}, batch {r['batch']}: planned γ={r['planned_gamma']} "
            f"{pts[r['planned_gamma']]['tokens_per_s']:.1f} tok/s, best γ={c['best_gamma']} "
            f"{c['best_tokens_per_s']:.1f} (repeats "
            f"{pts[c['best_gamma']]['min']:.1f}-{pts[c['best_gamma']]['max']:.1f})"
        )


def test_static_batch_choice_reaches_bar(rows, focus_rows):
    for r in rows + focus_rows:
        assert r["static_compare"]["ratio"] >= pvm.TARGET, (
            r["alpha"],
            r["batch"],
            r["static_gamma"],
        )


def test_static_batch_prediction_follows_quiet_curve(focus_rows):
    for r in focus_rows:
        for g, p in r["points"].items():
            assert r["predicted_static"][g] == pytest.approx(p["tokens_per_s"], rel=STATIC_ERR), (
                r["batch"],
                g,
            )


def test_planner_static_batch_option_reaches_the_bar(runs):
    """planner.plan(static_batch=True) — the engine's workload shape — picks a γ at ≥ 0.97 of the
    best."""
    from specmoe.inputs.hardware import load_system
    from specmoe.planning.search import plan

    system = load_system(pvm.PROFILE)
    for (alpha, _batch), by_g in pvm.curves(runs).items():
        pts = {g: pvm.point(grp) for g, grp in by_g.items()}
        r0 = next(iter(by_g.values()))[0]
        p = plan(
            model=r0.model,
            hardware=system,
            batch=r0.batch,
            policies=("specmoe",),
            gammas=pvm.GAMMAS,
            draft_experts=[pvm.DRAFT_EXPERTS],
            acceptance=alpha,
            routing=pvm.pooled_routing(by_g.get(0, next(iter(by_g.values())))),
            prompt_len=r0.prompt_len,
            output_len=r0.max_new_tokens,
            explain=False,
            static_batch=True,
        )
        cmp = compare_with_measured(
            [(g, v["tokens_per_s"]) for g, v in pts.items()], p["best"]["gamma"], 0.97
        )
        assert cmp["ratio"] >= 0.97, (alpha, r0.batch, p["best"]["gamma"], cmp)
