"""The GPU campaign's CPU dry run: every step (env, checks, kernel benchmarks, microbenchmarks,
copies, end-to-end runs, quick tune, summary) in its own process, from a directory that is not
the repository root, at tiny shapes under the Triton interpreter. About 30 s of CPU time (90 s of
wall time on a loaded 2-core machine); with an interpreter holding only torch, triton and numpy
(`python -m venv /tmp/bare && /tmp/bare/bin/pip install torch==2.13.0 numpy triton`), run
`DRY=1 PYTHON=/tmp/bare/bin/python experiments/gpu_campaign.sh /tmp/dry` by hand: the same
steps through the link farm."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specmoe.measure.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_campaign_dry_run_completes_every_step(tmp_path):
    out = tmp_path / "campaign"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(DRY="1", PYTHON=sys.executable)
    res = subprocess.run([str(ROOT / "experiments" / "gpu_campaign.sh"), str(out)], env=env,
                         capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    steps = dict(
        line.split("\t")[:2] for line in (out / "logs" / "steps.tsv").read_text().splitlines()
    )
    assert steps == dict.fromkeys(
        ("env", "checks", "kernels", "micro", "vs_tables", "copies", "e2e", "tune"), "ok"
    )
    checks = json.loads((out / "checks.json").read_text())["checks"]
    assert {c["status"] for c in checks} <= {"PASS", "SKIP"} and sum(
        c["status"] == "PASS" for c in checks
    ) >= 3
    ops = read_trace(out / "traces" / "micro-ops.jsonl.gz")
    assert {e["cat"] for e in ops.events} == {"gemm", "moe", "attn"}
    assert {e["cat"] for e in read_trace(out / "traces" / "micro-copy.jsonl.gz").events} == {
        "h2d",
        "d2h",
    }
    e2e = sorted((out / "traces" / "e2e").rglob("*.jsonl.gz"))
    assert {p.parent.name for p in e2e} == {"train", "heldout"} and len(e2e) == 6
    assert all(read_trace(p).header["result"]["tokens_per_s"] > 0 for p in e2e)
    rows = json.loads((out / "tune" / "quick_tune.json").read_text())["rows"]
    assert [r["tokens"] for r in rows] == [1, 4]
    assert "end-to-end (6 traces)" in (out / "summary.txt").read_text()
