"""The kernel benchmark's --tiny smoke run,
and ahead-of-time compilation for a GPU (no GPU needed)."""

# TRITON_INTERPRET comes from the environment (CI's .ci/run and `make test` set it): a GPU run
# of these files then tests the compiled kernels, not the interpreter.
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from specmoe.kernels import _runtime as rt

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernels",
                                                  ROOT / "experiments" / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not rt.interpreting(), reason="the --tiny smoke run is for the interpreter")
def test_bench_tiny_writes_rows(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--out", str(out), "--peak-tflops", "10",
                       "--peak-gbps", "100"]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["interpreter"] is True and data["meta"]["peak_gbps"] == 100.0
    kernels = {r["kernel"] for r in data["rows"]}
    assert kernels == {"fused_moe", "gating", "rmsnorm", "rope", "attention"}
    for r in data["rows"]:
        assert r["time_us"] > 0 and r["ref_time_us"] > 0
        assert r["max_abs_err"] < 0.05, r  # the kernel agreed with its reference
        ideal = max(r["flops"] / 10e12, r["bytes"] / 100e9)
        assert r["roofline_fraction"] == pytest.approx(ideal / (r["time_us"] * 1e-6))
    assert "fused_moe" in capsys.readouterr().out
    csv_out = tmp_path / "bench.csv"
    assert bench.main(["--tiny", "--kernels", "gating", "--no-reference",
                       "--out", str(csv_out)]) == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == 1 and rows[0]["kernel"] == "gating" and rows[0]["peak_tflops"] == "989.0"


@pytest.mark.skipif(not rt.interpreting(), reason="the --tiny smoke run is for the interpreter")
def test_bench_takes_peaks_from_a_hardware_profile(tmp_path):
    hardware = pytest.importorskip("specmoe.inputs.hardware")
    gpu = hardware.load_system("h100-sxm").gpu
    out = tmp_path / "b.json"
    load_bench().main(["--tiny", "--kernels", "gating", "--no-reference", "--hardware",
                       "h100-sxm", "--out", str(out)])
    meta = json.loads(out.read_text())["meta"]
    assert (meta["peak_tflops"], meta["peak_gbps"]) == (gpu.bf16_tflops, gpu.hbm_bw_gbps)
    assert meta["peak_source"] == "hardware:h100-sxm"
    with pytest.raises(SystemExit, match="--hardware"):
        load_bench().main(["--tiny", "--kernels", "gating", "--hardware", "no-such-gpu-xyz"])


def test_bench_rejects_unknown_kernel():
    with pytest.raises(SystemExit, match="unknown"):
        load_bench().main(["--tiny", "--kernels", "moe,matmul"])


def _ptxas() -> Path | None:
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return p if p.exists() and os.access(p, os.X_OK) else None


@pytest.mark.slow
@pytest.mark.skipif(_ptxas() is None, reason="Triton's bundled ptxas is not available here")
def test_kernels_compile_for_sm90():
    """Every kernel variant the public functions launch compiles for an H100 (sm_90), with the
    default tile configs inside a 99 KB shared-memory budget."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-m", "specmoe.kernels.compile_check", "--arch", "90",
                          "--quick"], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("ok")]
    names = {ln.split()[2] for ln in lines}
    assert {"_align_kernel", "_gate_up_kernel", "_down_kernel", "_sum_kernel", "_gating_kernel",
            "_rmsnorm_kernel", "_rope_kernel", "_attn_kernel", "_combine_kernel"} <= names


def test_time_fn_counts_reps():
    calls = []
    times = rt.time_fn(lambda: calls.append(1), reps=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)


def test_bench_detects_the_gpu_and_reads_its_profile():
    """No H100 default for an H200: the name picks the profile (read without pyyaml)."""
    bench = load_bench()
    assert bench.device_peaks("NVIDIA H200")[:2] == (989.5, 4800.0)
    assert bench.device_peaks("NVIDIA H100 80GB HBM3")[:2] == (989.5, 3350.0)
    assert bench.device_peaks("NVIDIA H100 PCIe")[:2] == (756.5, 2000.0)
    assert bench.device_peaks("NVIDIA A100-SXM4-80GB")[:2] == (312.0, 2039.0)
    assert bench.device_peaks("Some Future GPU") is None
    args = bench.parse_args([])
    with pytest.raises(SystemExit, match="GPU_PROFILES"):
        bench._peaks(args, "Some Future GPU")
    assert bench._peaks(bench.parse_args(["--peak-tflops", "1", "--peak-gbps", "2"]),
                        "Some Future GPU") == (1.0, 2.0, "cli")
    tflops, gbps, src = bench._peaks(args, "NVIDIA H200")
    assert (tflops, gbps) == (989.5, 4800.0) and "h200-sxm" in src
    for _, profile in bench.GPU_PROFILES:  # every mapped profile exists and parses
        assert all(v > 0 for v in bench.profile_peaks(profile))
