"""`notebooks/analysis`: the .ipynb is jupytext's conversion of the .py, and it runs top to
bottom (nbclient, this environment's python3 kernel) on the tiny trained ORL OPQN workdir."""

import os
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]'")
jupytext = pytest.importorskip("jupytext", reason="pip install -e '.[test]'")

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks")
PAIRED = os.path.join(NOTEBOOKS, "analysis.py")
NOTEBOOK = os.path.join(NOTEBOOKS, "analysis.ipynb")


def _cells(nb):
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


def test_ipynb_is_generated_from_the_py_file():
    stored = nbformat.read(NOTEBOOK, as_version=4)
    generated = jupytext.read(PAIRED)
    assert _cells(stored) == _cells(generated), (
        "notebooks/analysis.ipynb is out of date: run `jupytext --to ipynb notebooks/analysis.py`"
    )
    assert stored.metadata["kernelspec"]["name"] == "python3"
    for cell in stored.cells:
        assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None)
    assert "parameters" in _cells(stored)[1][2]  # papermill's parameter cell: WORKDIR


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebook_runs_top_to_bottom(trained_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("DPQ_WORKDIR", trained_runs["orl_opqn"])
    # The workdir's numerics and cheap compiles, as in the other analysis tests.
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
    # This environment's kernel spec first (ipykernel installs it), then no user state touched.
    monkeypatch.setenv("JUPYTER_PATH", os.path.join(sys.prefix, "share", "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    code = [c for c in nb.cells if c.cell_type == "code"]
    kernel_python = re.search(r"kernel python: (\S+)", _text(code[1])).group(1)
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable)

    text = "".join(_text(c) for c in code)
    pairs = re.findall(r"(\S+): report ([0-9.]+), recomputed ([0-9.]+)", text)
    assert {p[0] for p in pairs} == {"map@all", "p@5"}
    assert all(report == recomputed for _, report, recomputed in pairs)
    assert "PQ codes: no Hamming radius." in text
    assert re.search(r"indexed 280 images: \{'kind': 'pq'", text)
    assert len(re.findall(r"^#\d+: item \d+", text, flags=re.M)) == 8  # K results
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    # training, PR by rank, P@K, codeword usage, code groups, grid, custom query grid (PQ codes:
    # no Hamming-radius curve).
    assert len(images) == 7
    assert "image/png" in code[-1].outputs[-1]["data"]  # the custom query's results
