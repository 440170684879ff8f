"""Interactive use: the quick-start notebook, top to bottom, and `kedro ipython`, on a tiny
project that a real run has filled."""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from mnist_fixtures import HANG, REPO, make_test_project, run_program, run_session

NOTEBOOK = REPO / "notebooks" / "quick_start.ipynb"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    # the base mlflow.yml's relative store, as a user's project has it
    project = make_test_project(tmp_path_factory.mktemp("interactive"), own_store=False)
    run_session(project)
    (project / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, project / "notebooks")
    return project


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_quick_start_notebook_runs_top_to_bottom(project, monkeypatch):
    monkeypatch.setenv("KEDRO_ENV", "test")  # the tiny project's environment, read by %reload_kedro
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    notebook = nbformat.read(project / "notebooks" / "quick_start.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=HANG, kernel_name="python3", resources={"metadata": {"path": project / "notebooks"}}
    ).execute()  # raises on the first cell that fails

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    html = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert "bce_per_image" in html  # the metrics table
    assert "test default" in html  # the tiny run, listed among the MLflow runs ...
    assert not (project / "notebooks" / "mlflow.db").exists()  # ... of the project's own store
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 7  # six figures and the generated digits


def test_kedro_ipython_starts_the_projects_own_ipython(project):
    # PATH without the virtual environment: Kedro's own command would start another IPython
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "KEDRO_DISABLE_TELEMETRY": "1"}
    done = run_program(
        project, "kedro", "ipython", "--env", "test", "--no-banner",
        "-c", "print(sorted(catalog.filter('mnist_')))", env=env, timeout=HANG,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['mnist_raw', 'mnist_test', 'mnist_train']" in done.stdout
