"""MLflow as a team reads it: run names and tags, evaluation runs linked to the model they
scored, node timings out of the curves' way, a relocatable store, a quiet start."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from cvae_mnist.glue.serving import MODEL_NAME
from mnist_fixtures import HANG, make_test_project, run_program, run_session, tracking_uri


def _run(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = run_program(project, "kedro", "run", *args, timeout=HANG)
    assert result.returncode == 0 or not check, (result.stdout + result.stderr)[-3000:]
    return result


def _client(project: Path, uri: str | None = None) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri or tracking_uri(project))


def _runs(client: mlflow.MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "attributes.status = 'FINISHED'", order_by=["start_time ASC"])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git checkout of a tiny project, trained by `kedro run --env test`, then evaluated alone."""
    project = make_test_project(tmp_path_factory.mktemp("tracked"))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
        cwd=project,
        check=True,
    )
    full = _run(project, "--env", "test")
    _run(project, "--env", "test", "--pipeline", "evaluation")
    return project, full


def test_runs_are_named_and_tagged_for_people_not_for_the_machine(project):
    project, _ = project
    training, evaluation = _runs(_client(project))
    assert training.info.run_name.startswith("test default 20") and evaluation.info.run_name.startswith(
        "test evaluation 20"
    )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    )
    commit = head.stdout.strip()
    for run in (training, evaluation):
        tags = run.data.tags
        assert tags["env"] == "test" and tags["runner"] == "SequentialRunner"
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["mlflow.source.name"] == "kedro"  # MLflow's own: the absolute path of the script
        assert str(project) not in json.dumps(tags) and " object at 0x" not in json.dumps(tags)
    # the experiment is marked as model training, so that MLflow's UI opens on its runs
    experiment = _client(project).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_failed_runs_error_tag_names_files_relative_to_the_project(project):
    project, _ = project
    raw = project / "data" / "01_raw" / "mnist" / "t10k-labels-idx1-ubyte"
    kept = raw.read_bytes()
    raw.write_bytes(kept + b"\0")  # damaged: its SHA-256 no longer matches
    try:
        failed = _run(project, "--env", "test", "--pipeline", "data_ingestion", check=False)
    finally:
        raw.write_bytes(kept)
    assert failed.returncode == 1
    client = _client(project)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, "attributes.status = 'FAILED'")
    assert run.data.tags["error"].startswith(
        "DataError: data/01_raw/mnist/t10k-labels-idx1-ubyte has SHA-256 "
    )
    assert str(project) not in json.dumps(run.data.tags)


def test_parameters_are_flattened_with_a_partial_mlflow_yml(project):
    project, _ = project
    assert set((project / "conf" / "test" / "mlflow.yml").read_text().split()) == {
        "server:",
        "mlflow_tracking_uri:",
        tracking_uri(project),
    }
    training, _ = _runs(_client(project))
    assert training.data.params["training.epochs"] == "2" and training.data.params["model.latent_dim"] == "4"


def test_node_timings_are_one_artifact_not_a_chart_each(project, tmp_path):
    project, _ = project
    client = _client(project)
    training, _ = _runs(client)
    assert not [key for key in training.data.metrics if key.startswith("seconds.")]
    timings = json.loads(
        Path(client.download_artifacts(training.info.run_id, "node_seconds.json", str(tmp_path))).read_text()
    )
    assert {"training.train_cvae_node", "evaluation.evaluate_likelihood_node"} <= set(
        timings["seconds"]
    ) and timings["total"] > 0


def test_an_evaluation_run_names_the_model_it_scored_and_logs_its_metrics_on_it(project):
    project, _ = project
    client = _client(project)
    training, evaluation = _runs(client)
    mlflow.set_tracking_uri(tracking_uri(project))
    (model,) = mlflow.search_logged_models(
        experiment_ids=[training.info.experiment_id],
        filter_string=f"name = '{MODEL_NAME}'",
        output_format="list",
    )
    assert model.source_run_id == training.info.run_id
    for run in (training, evaluation):
        assert run.data.tags["scored_model"] == f"models:/{model.model_id}"
        assert run.data.tags["scored_model_run"] == training.info.run_id
    on_model = {(m.key, m.run_id) for m in client.get_logged_model(model.model_id).metrics}
    assert ("test.bce_per_image", training.info.run_id) in on_model
    assert ("test.bce_per_image", evaluation.info.run_id) in on_model


def test_the_start_is_quiet_until_the_first_node(project):
    _, full = project
    before_first_node = (full.stdout + full.stderr).split("Running node")[0]
    assert "WARNING" not in before_first_node and "Warning" not in before_first_node, before_first_node[
        -3000:
    ]


def test_a_copied_project_is_stopped_before_it_writes_into_the_originals_store(tmp_path):
    original = make_test_project(tmp_path / "original", env="local", own_store=False)
    _run(original, "--pipeline", "data_ingestion")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    before = sorted(p.relative_to(original) for p in (original / "mlruns").rglob("*"))
    database = (copy / "mlflow.db").read_bytes()
    refused = _run(copy, "--pipeline", "data_ingestion", check=False)
    assert refused.returncode == 1
    assert f"keeps its artifacts in {original / 'mlruns'}, not in this project's mlruns/" in refused.stderr
    assert "Name a new experiment under tracking.experiment.name" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.relative_to(original) for p in (original / "mlruns").rglob("*")) == before
    assert (copy / "mlflow.db").read_bytes() == database  # the user's store is not rewritten
    # the fix the message gives: a new experiment, whose artifacts go to the copy's mlruns/
    (copy / "conf" / "local" / "mlflow.yml").write_text(
        yaml.safe_dump({"tracking": {"experiment": {"name": "cvae_mnist_copy"}}})
    )
    _run(copy, "--pipeline", "data_ingestion")
    client = _client(copy, f"sqlite:///{copy / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cvae_mnist_copy"]
    assert str(copy / "mlruns") in experiment.artifact_location
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.artifact_uri.startswith((copy / "mlruns").as_uri())


def test_two_runs_in_one_python_process_each_log_into_their_own_store(tmp_path):
    # as in a notebook or the test suite: the first run must not stay active and catch the second
    first = make_test_project(tmp_path / "first", training={"epochs": 1})
    second = make_test_project(tmp_path / "second", training={"epochs": 1})
    for project in (first, second):
        run_session(project, "data_ingestion")
        assert mlflow.active_run() is None
        (experiment,) = [e for e in _client(project).search_experiments() if e.name == "cvae_mnist"]
        (run,) = _client(project).search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
