"""The layers hold: engine and kernels never import predict/plan/fit/app, and imports inside
functions are only for the optional heavy dependencies (import-linter checks the core's layers)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The one list of dependencies that may be imported inside a function: optional or slow to import.
# The simulator needs simpy, which GPU machines lack: callers that can fall back import it late.
HEAVY = (
    "torch",
    "triton",
    "ray",
    "plotly",
    "kaleido",
    "pandas",
    "pyarrow",
    "aiconfigurator_core",
    "nbclient",
    "nbformat",
    "safetensors",
    "transformers",
    "tokenizers",
    "importlib",
    "specmoe.engine",
    "specmoe.kernels",
    "specmoe.predictors.sim",
)
# specmoe/__init__.py resolves its public names lazily: `import specmoe.engine` on a GPU machine
# must not pull in pydantic, simpy or plotly.
LAZY_ROOT = "specmoe/__init__.py"
UPPER_LAYERS = ("specmoe.predictors", "specmoe.planning", "specmoe.fit", "specmoe.app")


def _imports(path: Path, inside_functions: bool):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if inside_functions and not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.lineno, node.module
            elif isinstance(node, ast.Import):
                for a in node.names:
                    yield node.lineno, a.name
        if not inside_functions:
            return


def _files(*dirs):
    return [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]


def test_engine_and_kernels_never_import_the_upper_layers():
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod}"
        for p in _files("engine", "kernels")
        for line, mod in _imports(p, inside_functions=False)
        if mod.startswith(UPPER_LAYERS)
    ]
    assert not bad, bad


def test_imports_inside_functions_are_only_heavy_dependencies():
    def heavy(mod):
        return any(mod == h or mod.startswith(h + ".") for h in HEAVY)

    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod} inside a function"
        for p in _files("specmoe")
        for line, mod in _imports(p, inside_functions=True)
        if not heavy(mod) and str(p.relative_to(ROOT)) != LAZY_ROOT
    ]
    assert not bad, bad


def test_import_linter_contracts_are_kept():
    # the venv's own script first: `.venv/bin/pytest` runs without the venv on PATH
    here = Path(sys.executable).parent / "lint-imports"
    exe = str(here) if here.is_file() else shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (dev extra)")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
