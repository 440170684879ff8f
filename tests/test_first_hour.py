"""What a new user meets first: the README's example environment, copied as it suggests."""

from __future__ import annotations

import re
import shutil

import yaml

from mnist_fixtures import HANG, REPO, make_test_project, run_program


def test_the_local_example_trains_into_its_own_folders_and_leaves_the_default_model(tmp_path):
    project = make_test_project(tmp_path / "project", env="local")
    first = run_program(project, "kedro", "run", timeout=HANG)
    assert first.returncode == 0, first.stderr[-3000:]
    _shows_a_summary_a_person_reads(first.stdout)
    default_model = project / "data" / "06_models" / "cvae.pt"
    made = default_model.read_bytes()
    # the README: copy conf/local-example/ to conf/local/ (here its globals.yml, and a change of
    # epochs like its parameters.yml, over the tiny test settings)
    shutil.copy(REPO / "conf" / "local-example" / "globals.yml", project / "conf" / "local")
    parameters = project / "conf" / "local" / "parameters.yml"
    tiny = yaml.safe_load(parameters.read_text())
    parameters.write_text(yaml.safe_dump({**tiny, "training": {**tiny["training"], "epochs": 1}}))
    refused = run_program(project, "kedro", "run", "--pipeline", "generation", timeout=HANG)
    assert refused.returncode == 1 and "kedro run --pipeline training" in refused.stderr
    assert "Traceback" not in refused.stderr
    trained = run_program(project, "kedro", "run", timeout=HANG)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert default_model.read_bytes() == made  # the default run's model is untouched
    assert (project / "data" / "06_models" / "mine" / "cvae.pt").exists()
    assert (project / "data" / "08_reporting" / "mine" / "metrics.csv").exists()
    generated = run_program(project, "kedro", "run", "--pipeline", "generation", timeout=HANG)
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert list((project / "data" / "07_model_output" / "mine").iterdir())


def _shows_a_summary_a_person_reads(output: str) -> None:
    """The end of a run's console output: the metrics, the files written, the MLflow run and
    how to open it; no line per load and save; lines not cut at 80 columns in a pipe."""
    summary = output[output.index("\nMetrics on the test set:\n") + 1 :].splitlines()[1:]
    assert summary[0].split()[0] == "n_images" and any(
        line.split()[0] == "label_swap_accuracy" for line in summary
    )
    assert "Files written (" in output and "  data/08_reporting/metrics.csv" in summary
    assert re.search(
        r"\nMLflow run 'local default [^']+': `make mlflow-ui`, then "
        r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning\n",
        output,
    )
    assert "Loading data from" not in output and "Saving data to" not in output
    assert re.search(r"Running node: train_cvae_node: train_cvae\(\[[^\n]*node\.py:\d+", output)  # one line
    assert "is relative" not in output  # kedro-mlflow's misleading note about a relative 'mlruns'
