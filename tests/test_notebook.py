"""experiments/design_space.ipynb executes top to bottom (nbclient, a fresh kernel) without
errors."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "design_space.ipynb"


def test_design_space_notebook_executes():
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (dev extra)")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (dev extra)")
    pytest.importorskip("ipykernel", reason="needs ipykernel (dev extra)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    client = nbclient.NotebookClient(
        nb,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError with the cell's traceback on any error
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert (
        "configurations;" in text and "speculation pays at" in text and "γ before the drop" in text
    )
    figures = sum(
        "application/vnd.plotly.v1+json" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert figures >= 6
