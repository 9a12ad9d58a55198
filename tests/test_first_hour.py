"""A new user's first hour: bad input gives one `error:` line naming the argument (exit 2), never a
traceback; help teaches (defaults, every flag described, --version); the API has real signatures;
written files respect the umask."""

import argparse
import inspect
import os
import stat
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specmoe
from specmoe.app.cli import main as cli_main
from specmoe.app.cli.main import build_parser, main
from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write_text
from specmoe.inputs.hardware import load_system, save_system
from specmoe.measure.trace import event, write_trace
from specmoe.planning.sweep import write_table

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "experiments" / "grids" / "default.yaml"


def _error(capsys, argv) -> str:
    """Run the CLI expecting exit 2 and one `error:` line; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def blocker(tmp_path):
    """A regular file: a path under it is a folder that cannot be created."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


@pytest.mark.parametrize(
    "argv, flag",
    [
        (
            ["plan", "--confirm", "analytic", "--max-gamma", "1", "--html", "{b}/x/plan.html"],
            "--html",
        ),
        (["simulate", "--iterations", "2", "--chrome", "{b}/x/c.json"], "--chrome"),
        (["simulate", "--iterations", "2", "--trace", "{b}/x/t.jsonl"], "--trace"),
        (["sweep", str(GRID), "-o", "{b}/x/r.csv"], "--output"),
        (["report", "-o", "{b}/x/r.html"], "--output"),
        (["calibrate", "t.jsonl", "--hardware", "h100-pcie", "-o", "{b}/x/p.yaml"], "--out"),
        (
            ["validate", "t.jsonl", "--hardware", "h100-pcie", "--markdown", "{b}/x/v.md"],
            "--markdown",
        ),
    ],
)
def test_an_output_folder_that_cannot_be_created_names_the_flag(capsys, blocker, argv, flag):
    line = _error(capsys, [a.replace("{b}", str(blocker)) for a in argv])
    assert flag in line and "cannot create the folder" in line


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["engine", "run", "--trace", "{b}/x/t.jsonl"], "--trace"),
        (["engine", "microbench", "--quick", "--out", "{b}/x/m.jsonl"], "--out"),
        (["engine", "bench", "--out", "{b}/x"], "--out"),
    ],
)
def test_engine_output_folders_are_checked_before_any_work(capsys, blocker, argv, flag):
    pytest.importorskip("torch")
    assert flag in _error(capsys, [a.replace("{b}", str(blocker)) for a in argv])


def test_a_missing_output_folder_is_created(tmp_path, capsys):
    page = tmp_path / "new" / "deeper" / "plan.html"
    assert main(["plan", "--confirm", "analytic", "--max-gamma", "2", "--html", str(page)]) == 0
    assert page.stat().st_size > 10_000
    chrome = tmp_path / "nodir" / "x.json"
    assert main(["simulate", "--iterations", "2", "--batch", "2", "--chrome", str(chrome)]) == 0
    assert chrome.exists()


def test_report_trace_of_a_non_trace_file(tmp_path, capsys):
    res = tmp_path / "results.parquet"
    res.write_bytes(b"PAR1\x00\xff\xfe binary \x89\x00" * 20)
    line = _error(capsys, ["report", str(res), "--trace", str(res), "-o", str(tmp_path / "r.html")])
    assert "--trace" in line and "specmoe.trace/1" in line


def test_report_of_a_grid_says_what_to_run(tmp_path, capsys):
    line = _error(capsys, ["report", str(GRID), "-o", str(tmp_path / "r.html")])
    assert line.startswith("error: results ") and "output" not in line.split(":")[1]
    assert "specmoe sweep" in line


def test_sweep_rejects_an_unknown_extension_before_running(monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr("specmoe.app.cli.sweep.run_sweep", boom)
    monkeypatch.setattr("specmoe.app.cli.sweep.load_grid", boom)
    line = _error(capsys, ["sweep", str(GRID), "-o", "x.csvv"])
    assert "--output" in line and ".csv" in line


def test_messages_name_the_flag_and_the_cli_command(capsys):
    assert "--max-gamma" in _error(capsys, ["plan", "--max-gamma", "-3"])
    line = _error(capsys, ["predict", "--hardware", "h100-pcei"])
    assert (
        "`specmoe hardware list`" in line and "list_hardware()" not in line and "h100-pcie" in line
    )


def test_a_closed_pipe_is_not_a_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "specmoe.app.cli.main", "models", "show", "mixtral-8x7b"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader (`| head`) is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err


def test_api_unknown_argument_names_it_and_the_closest(monkeypatch):
    with pytest.raises(SpecMoEError, match=r"unknown argument 'gama' \(did you mean: gamma"):
        specmoe.predict(gama=5)
    with pytest.raises(SpecMoEError, match=r"'resident_expert' \(did you mean: resident_experts"):
        specmoe.plan(resident_expert=2, confirm="analytic", gammas=range(2))
    assert specmoe.predict(batch=8, draft_set="hot")["tokens_per_s"] > 0  # known names still pass


def test_api_signatures_docstrings_and_dir():
    for fn in (specmoe.predict, specmoe.plan):
        params = inspect.signature(fn).parameters
        assert {"model", "hardware", "batch", "acceptance"} <= set(params)
        assert params["batch"].default == 64 and "batch" in fn.__doc__
    assert "gamma" in inspect.signature(specmoe.predict).parameters
    assert {"predict", "plan", "load_model", "load_system", "SpecMoEError"} <= set(dir(specmoe))


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_flag_of_every_command_is_described():
    pytest.importorskip("torch")  # the engine's commands load only with torch
    missing = [
        f"{p.prog} {'/'.join(a.option_strings) or a.dest}"
        for p in _parsers(build_parser(["engine"]))
        for a in p._actions
        if not isinstance(
            a, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)
        )
        and not (a.help or "").strip()
    ]
    assert not missing, missing


def test_help_shows_defaults_and_explains_list_and_show(capsys):
    for argv in (["predict", "--help"], ["plan", "--help"], ["simulate", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        for default in (
            "(default: mixtral-8x7b)",
            "(default: h100-pcie)",
            "(default: 64)",
            "(default: 512)",
            "(default: 256)",
            "(default: model)",
        ):
            assert default in " ".join(out.split()), (argv, default)
    with pytest.raises(SystemExit):
        main(["hardware", "--help"])
    out = capsys.readouterr().out
    assert "list:" in out and "show NAME:" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"specmoe {specmoe.__version__}"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        want = 0o666 & ~mask
        paths = [
            atomic_write_text(tmp_path / "a.txt", "x"),
            write_trace(tmp_path / "t.jsonl.gz", {"source": "sim"}, [event("a", "attn", 0.0, 1.0)]),
        ]
        save_system(load_system("h100-pcie"), tmp_path / "h.yaml")
        paths.append(tmp_path / "h.yaml")
        import numpy as np

        paths.append(
            write_table(
                {"batch": np.array([1, 2]), "policy": np.array(["a", "b"], dtype=object)},
                tmp_path / "r.csv",
            )
        )
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in map(Path, paths)}
        assert all(m == want for m in modes.values()), (
            oct(want),
            {k: oct(v) for k, v in modes.items()},
        )
    finally:
        os.umask(old)


# ---- property: random command lines never end in a traceback -------------------------------------

VALUES = st.sampled_from(
    [
        "0",
        "-3",
        "1",
        "2",
        "8",
        "64",
        "1e9",
        "abc",
        "0.5",
        "1.5",
        "",
        "mixtral-8x7b",
        "h100-pcie",
        "nosuch",
        "paper",
        "measured:tiny",
        "measured:nosuch",
        "zipf:1.2",
        "zipf:x",
        "hot",
        "specmoe,cpu",
        "{missing}",
    ]
)
PATHS = st.sampled_from(
    [
        "{blocked}",
        "{tmp}/out.html",
        "{tmp}/new/out.json",
        "{tmp}/t.jsonl",
        "{missing}",
        "{tmp}",
        "out.txt",
    ]
)
OUTPUT_FLAGS = {"--html", "--trace", "--chrome"}
PREDICT_FLAGS = [
    "--model",
    "--hardware",
    "--host",
    "--link",
    "--batch",
    "--prompt-len",
    "--output-len",
    "--acceptance",
    "--routing",
    "--policy",
    "--gamma",
    "--draft-experts",
    "--draft-set",
    "--resident-experts",
    "--lru-slots",
    "--prefetch-precision",
    "--prefetch-hit-rate",
    "--spec-min-batch",
]
PLAN_FLAGS = PREDICT_FLAGS[:9] + ["--policies", "--html"]
COMMANDS = {
    "predict": (["predict", "--json"], PREDICT_FLAGS),
    "plan": (["plan", "--confirm", "analytic", "--max-gamma", "2", "--json"], PLAN_FLAGS),
    "simulate": (
        ["simulate", "--iterations", "2", "--json"],
        PREDICT_FLAGS + ["--trace", "--chrome"],
    ),
    "hardware": (["hardware"], []),
    "models": (["models"], []),
}


@st.composite
def command_lines(draw):
    name = draw(st.sampled_from(sorted(COMMANDS)))
    base, flags = COMMANDS[name]
    argv = list(base)
    if name in ("hardware", "models"):
        argv += [draw(st.sampled_from(["list", "show", "import", "bogus"]))]
        if draw(st.booleans()):
            argv.append(draw(VALUES))
        return argv
    outputs = [f for f in flags if f in OUTPUT_FLAGS]
    chosen = draw(st.lists(st.sampled_from(flags), max_size=3, unique=True))
    if outputs and draw(st.booleans()):  # an output flag in half the runs: paths are the risk
        chosen.append(draw(st.sampled_from(outputs)))
    for flag in dict.fromkeys(chosen):
        argv += [flag, draw(PATHS if flag in OUTPUT_FLAGS else VALUES)]
    return argv


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(argv=command_lines())
def test_random_command_lines_never_raise(tmp_path, blocker, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)  # relative output paths land here, not in the repository
    argv = [
        a.format(missing=tmp_path / "missing.json", blocked=blocker / "x" / "y.html", tmp=tmp_path)
        for a in argv
    ]
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
        try:
            code = cli_main.main(argv)
        except SystemExit as exc:  # argparse: usage error (2) or --help (0)
            code = exc.code
    assert code in (0, 1, 2), (argv, code)
