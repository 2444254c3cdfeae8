"""The notebooks in notebooks/ run top to bottom (nbclient) against a finished run of the offline default's
code paths on a tiny model (configs/tiny.py:default: chat prompt, own answers, calibrated birth thresholds,
b_dec subtraction), are stored without outputs, and only call package functions."""

import ast
import os

import nbformat
import pytest
import tiny_pipeline  # tests/ is on sys.path under pytest

NOTEBOOK_DIR = os.path.join(tiny_pipeline.REPO, "notebooks")
NOTEBOOKS = ("quickstart.ipynb", "sae_explorer.ipynb", "detection_analysis.ipynb")
ALLOWED_IMPORTS = {"os", "numpy", "ghosttrack_jax"}


def _read(name):
  return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs_and_thin(name):
  nb = _read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, f"{name}: stored with outputs"
    tree = ast.parse(cell.source)
    for node in ast.walk(tree):
      assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda)), (
        f"{name}: logic defined in the notebook; put it in ghosttrack_jax.tools.explore"
      )
      if isinstance(node, ast.Import):
        assert {a.name.split(".")[0] for a in node.names} <= ALLOWED_IMPORTS, ast.unparse(node)
      if isinstance(node, ast.ImportFrom):
        assert node.module.split(".")[0] in ALLOWED_IMPORTS, ast.unparse(node)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_a_run_of_the_default_settings(name, tiny_default_run, monkeypatch):
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel

  _, workdir, _ = tiny_default_run
  monkeypatch.setenv("GHOSTTRACK_CONFIG", tiny_pipeline.DEFAULT_CONFIG)
  monkeypatch.setenv("GHOSTTRACK_WORKDIR", workdir)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = _read(name)
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}}
  )
  client.execute()  # raises CellExecutionError with the failing cell and its traceback
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors
  assert any(o.output_type in ("display_data", "execute_result") for o in outputs)
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  if name == "quickstart.ipynb":
    assert "verdict:" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if "data" in o)
    assert "Tracks across all 2 layers" in html  # the dashboard, every layer of the tiny model
  if name == "sae_explorer.ipynb":
    assert "fires on" in text
