"""Hardware profiles: shipped data validates, composition and overrides, user files, errors."""

import shutil
from pathlib import Path

import pytest
import yaml

from specmoe.errors import SpecMoEError
from specmoe.inputs import hardware as hw

LISTED = hw.list_hardware()
ROOT = hw._profiles_dir()


def _gpu_fields(**changes) -> dict:
    data = yaml.safe_load((ROOT / "gpus" / "h100-pcie.yaml").read_text())
    data["name"] = "my-gpu"
    data.update(changes)
    return data


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- shipped data


def test_required_profiles_are_shipped():
    gpus = {
        "h100-sxm",
        "h100-pcie",
        "h100-nvl",
        "h200-sxm",
        "a100-sxm-80gb",
        "a100-pcie-40gb",
        "l40s",
        "l4",
        "a30",
        "t4",
        "rtx-4090",
        "b200",
        "h100-96gb",
    }
    assert gpus <= set(LISTED["gpus"])
    assert {"ddr4-server", "ddr5-server", "ddr5-epyc", "workstation-ddr5"} <= set(LISTED["hosts"])
    assert {"pcie3-x16", "pcie4-x16", "pcie5-x16", "nvlink4"} <= set(LISTED["links"])
    assert gpus | {"specmoe-paper-h100"} <= set(LISTED["systems"])


@pytest.mark.parametrize(
    "kind,loader", [("gpus", hw.load_gpu), ("hosts", hw.load_host), ("links", hw.load_link)]
)
def test_every_shipped_part_loads_and_is_named_like_its_file(kind, loader):
    for name in LISTED[kind]:
        part = loader(name)
        assert part.name == name
        for field in hw._numeric_fields(type(part)):
            if getattr(part, field) is not None:
                assert part.sources[field].strip(), (name, field)


@pytest.mark.parametrize("name", LISTED["systems"])
def test_every_shipped_system_loads(name):
    system = hw.load_system(name)
    assert system.name == name and system.gpu_count >= 1
    assert hw.load_host(system.gpu.default_host) and hw.load_link(system.gpu.default_link)


def test_each_gpu_system_uses_the_gpus_defaults():
    for name in LISTED["gpus"]:
        system = hw.load_system(name)
        assert (system.host.name, system.link.name) == (
            system.gpu.default_host,
            system.gpu.default_link,
        )


def test_sanity_relations_between_datasheet_numbers():
    g = {n: hw.load_gpu(n) for n in LISTED["gpus"]}
    links = {n: hw.load_link(n) for n in LISTED["links"]}
    assert g["h200-sxm"].hbm_bw_gbps > g["h100-sxm"].hbm_bw_gbps > g["h100-pcie"].hbm_bw_gbps
    assert g["h200-sxm"].hbm_gb > g["h100-96gb"].hbm_gb > g["h100-sxm"].hbm_gb
    assert g["b200"].bf16_tflops > g["h100-sxm"].bf16_tflops > g["a100-sxm-80gb"].bf16_tflops
    assert links["pcie5-x16"].h2d_gbps > links["pcie4-x16"].h2d_gbps > links["pcie3-x16"].h2d_gbps
    assert links["pcie5-x16"].h2d_gbps == pytest.approx(2 * links["pcie4-x16"].h2d_gbps, rel=1e-3)
    assert links["pcie5-x16"].h2d_gbps == pytest.approx(32 * 16 * 128 / 130 / 8, rel=1e-3)
    for gpu in g.values():
        if gpu.fp8_tflops is not None:  # dense FP8 is twice dense BF16 on Hopper/Ada/Blackwell
            assert gpu.fp8_tflops == pytest.approx(2 * gpu.bf16_tflops, rel=0.02), gpu.name
        assert gpu.bf16_tflops >= gpu.fp32_tflops, gpu.name
    assert hw.load_host("ddr5-server").dram_bw_gbps > hw.load_host("ddr4-server").dram_bw_gbps
    paper = hw.load_system("specmoe-paper-h100")
    assert paper.gpu.hbm_gb == 96 and paper.link.h2d_gbps == pytest.approx(63.0)
    assert paper.host.dram_gb >= 1000


# ---------------------------------------------------------------- composition


def test_names_are_case_insensitive_and_accept_underscores():
    assert hw.load_system("H100_PCIE") == hw.load_system("h100-pcie")
    assert hw.load_gpu(" RTX_4090 ").name == "rtx-4090"


def test_overrides_replace_parts_and_mark_the_name():
    s = hw.load_system("h100-pcie", host="ddr4-server", link="PCIE4_X16", gpu_count=2)
    assert (s.host.name, s.link.name, s.gpu_count) == ("ddr4-server", "pcie4-x16", 2)
    assert s.gpu == hw.load_gpu("h100-pcie")
    assert s.name == "h100-pcie+ddr4-server+pcie4-x16"
    assert hw.load_system("h100-pcie", host="ddr5-server").name == "h100-pcie"
    with pytest.raises(SpecMoEError, match="gpu_count"):
        hw.load_system("t4", gpu_count=0)


def test_user_system_file_names_and_inlines_parts(tmp_path):
    link = hw.load_link("pcie4-x16").model_dump()
    link.update(name="slow-link", h2d_gbps=10.0)
    path = _write(
        tmp_path / "mine.yaml",
        {
            "gpu": "l40s",
            "host": "DDR5_EPYC",
            "link": link,
            "gpu_count": 2,
            "efficiency": {"link": 0.8},
        },
    )
    s = hw.load_system(str(path))
    assert (s.name, s.gpu.name, s.host.name, s.link.h2d_gbps) == ("mine", "l40s", "ddr5-epyc", 10)
    assert s.gpu_count == 2 and s.efficiency == {"link": 0.8}
    assert hw.load_system(path, link="pcie5-x16").link.name == "pcie5-x16"


def test_user_gpu_file_is_composed_with_its_defaults_and_parts_can_be_relative(tmp_path):
    gpu_path = _write(tmp_path / "gpu.yaml", _gpu_fields(hbm_gb=123, default_host="ddr4-server"))
    s = hw.load_system(str(gpu_path))
    assert (s.name, s.gpu.hbm_gb, s.host.name, s.link.name) == (
        "my-gpu",
        123,
        "ddr4-server",
        "pcie5-x16",
    )
    assert hw.load_gpu(str(gpu_path)).hbm_gb == 123
    sub = tmp_path / "sys"
    sub.mkdir()
    _write(sub / "box.yaml", {"name": "box", "gpu": "../gpu.yaml"})
    assert hw.load_system(str(sub / "box.yaml")).gpu.hbm_gb == 123


def test_calibrated_profiles_resolve_after_systems(tmp_path, monkeypatch):
    root = tmp_path / "hwprofiles"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(hw, "_profiles_dir", lambda: root)
    fitted = hw.load_system("h100-pcie").model_copy(
        update={"name": "lab-h100", "efficiency": {"hbm": 0.9}, "calibration": {"mape": 0.03}}
    )
    hw.save_system(fitted, root / "calibrated" / "lab-h100.yaml")
    assert hw.load_system("lab_h100") == fitted
    assert "lab-h100" in hw.list_hardware()["systems"]
    shadow = fitted.model_copy(update={"name": "t4"})  # systems/ wins over calibrated/
    hw.save_system(shadow, root / "calibrated" / "t4.yaml")
    assert hw.load_system("t4").gpu.name == "t4"


# ---------------------------------------------------------------- writing


def test_save_system_round_trips(tmp_path):
    import numpy as np

    s = hw.load_system("rtx-4090", host="ddr5-server").model_copy(
        update={
            "efficiency": {"hbm": 0.85, "link": 0.9},
            "calibration": {
                "date": "2025-01-01",
                "mape": np.float64(0.031),
                "n": np.int64(12),
                "traces": ["a.jsonl.gz"],
                "per_op": {"gemm": [0.1, 0.2]},
            },
        }
    )
    out = tmp_path / "deep" / "cal.yaml"
    hw.save_system(s, out)
    back = hw.load_system(str(out))
    assert hw.system_to_dict(back) == hw.system_to_dict(s)
    assert back.calibration["n"] == 12 and type(back.calibration["n"]) is int
    assert [p.name for p in out.parent.iterdir()] == ["cal.yaml"]  # no temp file left


def test_system_to_dict_is_json_and_self_contained():
    import json

    d = hw.system_to_dict(hw.load_system("t4"))
    assert json.loads(json.dumps(d)) == d
    assert d["gpu"]["fp8_tflops"] is None and d["host"]["name"] == "ddr4-server"


# ---------------------------------------------------------------- errors


def _error(fn, *args, **kw) -> str:
    with pytest.raises(SpecMoEError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_unknown_names_suggest_the_nearest():
    assert "did you mean: h100-pcie" in _error(hw.load_system, "h100-pcei")
    assert "ddr5-server" in _error(hw.load_host, "ddr5-servr")
    assert "pcie4-x16" in _error(hw.load_system, "t4", link="pcie4x16")
    assert "not found" in _error(hw.load_system, "no/such/file.yaml")
    assert "not found" in _error(hw.load_gpu, Path("missing.yaml"))


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.yaml", "name: x\nhbm_gb: [1, 2\n")
    msg = _error(hw.load_system, str(path))
    assert "bad.yaml" in msg and "malformed YAML" in msg and "line" in msg
    assert "mapping" in _error(hw.load_gpu, str(_write(tmp_path / "list.yaml", "- 1\n- 2\n")))


@pytest.mark.parametrize("value", [0, -3.5])
def test_non_positive_number_names_field_value_and_rule(tmp_path, value):
    path = _write(tmp_path / "g.yaml", _gpu_fields(hbm_bw_gbps=value))
    msg = _error(hw.load_gpu, str(path))
    assert "g.yaml" in msg and f"hbm_bw_gbps = {value!r}" in msg and "greater than 0" in msg


def test_missing_source_names_the_field(tmp_path):
    data = _gpu_fields()
    del data["sources"]["l2_mb"]
    msg = _error(hw.load_gpu, str(_write(tmp_path / "g.yaml", data)))
    assert "missing source for l2_mb" in msg and "g.yaml" in msg


def test_unknown_field_and_source_key_are_rejected_with_suggestions(tmp_path):
    msg = _error(hw.load_gpu, str(_write(tmp_path / "g.yaml", _gpu_fields(hbm_gbs=80))))
    assert "unknown field 'hbm_gbs'" in msg and "did you mean: hbm_gb" in msg
    data = _gpu_fields()
    data["sources"]["l2mb"] = "x"
    assert "did you mean: l2_mb" in _error(hw.load_gpu, str(_write(tmp_path / "h.yaml", data)))


def test_bad_types_names_and_nested_errors(tmp_path):
    assert "must be a number" in _error(
        hw.load_gpu, str(_write(tmp_path / "a.yaml", _gpu_fields(tdp_w=True)))
    )
    assert "lowercase" in _error(
        hw.load_gpu, str(_write(tmp_path / "b.yaml", _gpu_fields(name="My GPU")))
    )
    host = hw.load_host("ddr4-server").model_dump()
    host["dram_gb"] = -1
    msg = _error(hw.load_system, str(_write(tmp_path / "s.yaml", {"gpu": "t4", "host": host})))
    assert "s.yaml" in msg and "dram_gb = -1" in msg
    assert "required field is missing" in _error(
        hw.load_gpu,
        str(
            _write(tmp_path / "c.yaml", {k: v for k, v in _gpu_fields().items() if k != "sm_count"})
        ),
    )
    assert "neither a system" in _error(hw.load_system, str(_write(tmp_path / "d.yaml", {"x": 1})))
