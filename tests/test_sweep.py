"""Sweeps: grid checks before any work, results equal to predict(), resumable runs, backends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import specmoe
from specmoe.app.cli.main import main
from specmoe.errors import SpecMoEError
from specmoe.planning.sweep import load_grid, load_results, run_sweep

GRID = {
    "name": "small",
    "axes": {
        "model": ["mixtral-8x7b", "qwen3-30b-a3b"],
        "hardware": ["h100-pcie"],
        "policy": ["ondemand", "caching", "specmoe"],
        "batch": {"start": 1, "stop": 128, "factor": 4},
        "gamma": {"start": 0, "stop": 8, "step": 2},
        "draft_experts": [1, 2, 4],
        "alpha": [0.6, "paper"],
    },
    "chunk_size": 40,
}


def _grid(**changes):
    g = json.loads(json.dumps(GRID))
    for k, v in changes.items():
        if v is None:
            g["axes"].pop(k)
        else:
            g["axes"][k] = v
    return g


def _same(a, b):
    assert list(a) == list(b)
    for k in a:
        if a[k].dtype == object:
            assert (a[k] == b[k]).all(), k
        else:
            assert np.array_equal(a[k], b[k], equal_nan=True), k


@pytest.mark.parametrize(
    "change,match",
    [
        ({"batch": [0, 4]}, r"axes.batch: value 0"),
        ({"alpha": [0.5, 1.0]}, r"axes.alpha: value 1.0"),
        ({"alpha": ["great"]}, r"axes.alpha: value 'great'"),
        ({"gamma": []}, r"axes.gamma: empty"),
        ({"model": ["mixtral-8x8b"]}, r"axes.model: .*mixtral-8x8b.*did you mean"),
        ({"hardware": ["h100-pcei"]}, r"axes.hardware: .*h100-pcei"),
        ({"policy": ["ondemand", "fastest"]}, r"axes.policy: value 'fastest'"),
        (
            {"policy": ["spec-ep"]},
            r"axes.policy: value 'spec-ep' is not available with engine 'analytic'",
        ),
        (
            {"draft_experts": [2, 16]},
            r"axes.draft_experts: value 16 exceeds the 8 experts per layer of model mixtral-8x7b",
        ),
        ({"draft_experts": [0, 2]}, r"axes.draft_experts: value 0 is not allowed with gamma > 0"),
        ({"batch": [4, 4]}, r"axes.batch: value 4 appears twice"),
        ({"batch": 2.5}, r"axes.batch: value 2.5 must be a whole number"),
        ({"gamma": {"start": 0, "stop": 8}}, r"axes.gamma: a range is"),
        ({"routing": ["zipf:steep"]}, r"axes.routing: .*zipf"),
        ({"bacth": [1]}, r"unknown key 'bacth'.*did you mean: batch"),
        ({"model": None}, r"axes.model: required"),
    ],
)
def test_bad_grids_fail_before_any_work(tmp_path, change, match):
    calls = []
    with pytest.raises(SpecMoEError, match=match):
        run_sweep(
            _grid(**change), tmp_path / "r.csv", on_chunk=lambda *a: calls.append(a), progress=False
        )
    assert calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "grid,match",
    [
        ({"axes": GRID["axes"], "engines": "sim"}, r"unknown key 'engines'.*did you mean: engine"),
        ({"axes": GRID["axes"], "engine": "gpu"}, r"engine='gpu'"),
        ({"axes": GRID["axes"], "chunk_size": 0}, r"chunk_size=0"),
        ({"axes": {}}, r"axes: missing or empty"),
        ([1, 2], r"top level must be a mapping"),
    ],
)
def test_bad_grid_structure(grid, match):
    with pytest.raises(SpecMoEError, match=match):
        load_grid(grid)


def test_bad_output_name_fails_before_work(tmp_path):
    with pytest.raises(SpecMoEError, match="unknown format '.xlsx'"):
        run_sweep(GRID, tmp_path / "r.xlsx", progress=False)


def test_ignored_axes_collapse_and_rows_match_predict():
    t = run_sweep(GRID, progress=False, backend="serial")
    n_batch, n_gamma, n_n, n_alpha = 4, 5, 3, 2
    assert len(t["batch"]) == 2 * (2 * n_batch + n_batch * n_gamma * n_n * n_alpha)
    od = t["policy"] == "ondemand"
    assert (
        (t["gamma"][od] == 0).all()
        and (t["draft_experts"][od] == 0).all()
        and np.isnan(t["alpha"][od]).all()
    )
    paper = specmoe.predict(
        model="mixtral-8x7b",
        hardware="h100-pcie",
        policy="specmoe",
        batch=16,
        gamma=6,
        draft_experts=2,
        acceptance="paper",
    )
    i = np.flatnonzero(
        (t["model"] == "mixtral-8x7b")
        & (t["policy"] == "specmoe")
        & (t["batch"] == 16)
        & (t["gamma"] == 6)
        & (t["draft_experts"] == 2)
        & (t["acceptance"] == "paper")
    )
    assert len(i) == 1
    assert t["tokens_per_s"][i[0]] == pytest.approx(paper["tokens_per_s"], rel=1e-12)
    assert t["alpha"][i[0]] == pytest.approx(paper["alpha"])
    assert t["h2d_bytes_per_token"][i[0]] == pytest.approx(paper["h2d_bytes_per_token"], rel=1e-12)
    cached = specmoe.predict(
        model="qwen3-30b-a3b", hardware="h100-pcie", policy="caching", batch=64
    )
    j = np.flatnonzero(
        (t["model"] == "qwen3-30b-a3b") & (t["policy"] == "caching") & (t["batch"] == 64)
    )
    assert t["tokens_per_s"][j[0]] == pytest.approx(cached["tokens_per_s"], rel=1e-12)


class Stop(Exception):
    pass


def test_interrupted_sweep_resumes_to_the_same_results(tmp_path):
    ref = tmp_path / "ref.csv"
    run_sweep(GRID, ref, backend="serial", progress=False)
    out = tmp_path / "r.csv"

    def stop_after_3(cid, done, total):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(GRID, out, jobs=2, on_chunk=stop_after_3, progress=False)
    manifest = json.loads((tmp_path / "r.csv.parts" / "manifest.json").read_text())
    assert len(manifest["done"]) == 3 and manifest["chunks"] > 6 and not out.exists()
    calls = []
    run_sweep(GRID, out, backend="serial", on_chunk=lambda *a: calls.append(a[0]), progress=False)
    assert len(calls) == manifest["chunks"] - 3 and not set(calls) & set(manifest["done"])
    assert out.read_bytes() == ref.read_bytes()
    assert not (tmp_path / "r.csv.parts").exists()


def test_resume_refuses_a_changed_grid_unless_fresh(tmp_path):
    out = tmp_path / "r.csv"
    with pytest.raises(Stop):
        run_sweep(
            GRID,
            out,
            backend="serial",
            on_chunk=lambda *a: (_ for _ in ()).throw(Stop),
            progress=False,
        )
    other = _grid(batch=[1, 2])
    with pytest.raises(SpecMoEError, match="different grid.*--fresh"):
        run_sweep(other, out, backend="serial", progress=False)
    t = run_sweep(other, out, backend="serial", progress=False, fresh=True)
    assert set(t["batch"]) == {1, 2}


def test_killed_subprocess_resumes_to_the_same_results(tmp_path):
    """A real kill (SIGKILL) mid-run of a simulated sweep: chunk files are whole or absent."""
    pytest.importorskip("specmoe.predictors.sim")
    grid = {
        "name": "kill",
        "engine": "sim",
        "chunk_size": 1,
        "sim": {"iterations": 15, "seed": 3},
        "axes": {
            "model": ["nllb-moe-54b"],
            "hardware": ["specmoe-paper-h100"],
            "policy": ["specmoe"],
            "batch": [64, 128],
            "gamma": [4, 8, 10],
            "draft_experts": [4],
            "alpha": ["paper"],
        },
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "r.csv"
    manifest = tmp_path / "r.csv.parts" / "manifest.json"
    cmd = [
        sys.executable,
        "-m",
        "specmoe.app.cli.main",
        "sweep",
        str(path),
        "-o",
        str(out),
        "--backend",
        "serial",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["done"]) >= 2:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the sweep finished before it could be killed; make it longer")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(manifest.read_text())["done"]
    assert 2 <= len(done) < 6 and not out.exists()
    assert main(["sweep", str(path), "-o", str(out), "--backend", "serial", "--quiet"]) == 0
    _same(load_results(out), run_sweep(load_grid(path), backend="serial", progress=False))


def test_parquet_and_csv_hold_the_same_table(tmp_path):
    pytest.importorskip("pyarrow")
    a = run_sweep(GRID, tmp_path / "r.parquet", backend="serial", progress=False)
    _same(load_results(tmp_path / "r.parquet"), a)
    run_sweep(GRID, tmp_path / "r.csv", backend="serial", progress=False)
    _same(load_results(tmp_path / "r.csv"), a)


def test_ray_backend_matches_serial(tmp_path):
    ray = pytest.importorskip("ray", reason="ray not installed (pip install 'specmoe[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t = run_sweep(GRID, tmp_path / "r.csv", backend="ray", progress=False)
    finally:
        ray.shutdown()
    _same(t, run_sweep(GRID, backend="serial", progress=False))


def test_cli_sweep_and_its_errors(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    out = tmp_path / "r.csv"
    assert main(["sweep", str(grid), "-o", str(out), "--quiet", "--jobs", "1"]) == 0
    assert len(load_results(out)["batch"]) == load_grid(grid).size
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_grid(batch=[0])))
    assert main(["sweep", str(bad), "-o", str(tmp_path / "b.csv")]) == 2
    assert "axes.batch: value 0" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nope.yaml"), "-o", str(out)]) == 2


def test_a_20k_sweep_is_vectorised(tmp_path):
    """The 100k benchmark lives in experiments/bench_sweep.py; this guards the per-group
    vectorisation."""
    grid = _grid(
        batch={"start": 1, "stop": 1024, "factor": 2},
        gamma={"start": 0, "stop": 16, "step": 1},
        draft_experts=[1, 2, 3, 4, 6, 8],
        alpha=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        hardware=["h100-pcie", "l40s"],
    )
    g = load_grid({**grid, "chunk_size": 20000})
    assert g.size > 20_000
    t0 = time.perf_counter()
    run_sweep(
        g,
        tmp_path / "r.parquet" if _has("pyarrow") else tmp_path / "r.csv",
        backend="serial",
        progress=False,
    )
    assert time.perf_counter() - t0 < 15


def _has(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def test_shipped_grids_load():
    here = Path(__file__).resolve().parents[1] / "experiments" / "grids"
    sizes = {p.stem: load_grid(p).size for p in here.glob("*.yaml")}
    assert sizes["bench_100k"] >= 100_000 and sizes["default"] > 0
