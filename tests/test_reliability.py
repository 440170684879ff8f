"""Interruption, bad input and reproducibility, through the real `kedro run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner

from cvae_mnist.cli import cli
from mnist_fixtures import HANG, make_test_project, run_session, tracking_uri

KEDRO = str(Path(sys.executable).parent / "kedro")
CHILD_ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}


def _kedro_run(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [KEDRO, "run", "--env", "test", *args],
        cwd=project,
        env=CHILD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=HANG)
    assert process.returncode == 0, stderr[-3000:]


def _no_partial_files(folder: Path) -> bool:
    return not any(".tmp-" in path.name for path in folder.rglob("*"))


def test_a_killed_training_run_resumes_to_the_same_weights(tmp_path):
    epochs = 8  # killed as soon as the first checkpoint appears (10 ms polls), long before the last
    project = make_test_project(tmp_path, training={"epochs": epochs}, n_train=400)
    run_session(project, "data_ingestion")
    checkpoint = project / "data" / "06_models" / "checkpoint.pt"
    model_file = project / "data" / "06_models" / "cvae.pt"
    history_file = project / "data" / "08_reporting" / "training_history.json"

    process = _kedro_run(project, "--pipeline", "training")
    deadline = time.monotonic() + HANG
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=HANG)
    assert process.returncode == -signal.SIGKILL
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(project))
    killed, ingestion = client.search_runs(_experiments(client), order_by=["start_time DESC"])
    assert ingestion.info.status == "FINISHED"
    assert killed.info.status == "RUNNING"  # as docs/reliability.md says: SIGKILL cannot be caught
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= killed_at < epochs and not model_file.exists()
    assert _no_partial_files(project / "data")

    _finish(_kedro_run(project, "--pipeline", "training", "--params", "training.resume=true"))
    resumed = torch.load(model_file, weights_only=True)
    (resumed_run,) = client.search_runs(_experiments(client), "attributes.status = 'FINISHED'", max_results=1)
    steps = [m.step for m in client.get_metric_history(resumed_run.info.run_id, "training.train_loss")]
    assert steps == list(range(1, epochs + 1))  # the restored epochs too, each once
    resumed_history = history_file.read_text()

    _finish(_kedro_run(project, "--pipeline", "training"))  # uninterrupted, from scratch
    uninterrupted = torch.load(model_file, weights_only=True)
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name

    losses = ("train_loss", "test_loss", "train_kl", "test_kl")
    assert {k: json.loads(resumed_history)[k] for k in losses} == {
        k: json.loads(history_file.read_text())[k] for k in losses
    }


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory):
    project = make_test_project(tmp_path_factory.mktemp("trained"))
    # a process of its own: MLflow's client state is per process, as for a user
    _finish(_kedro_run(project))
    return project


def _kedro_run_output(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KEDRO, "run", "--env", "test", *args],
        check=False,
        cwd=project,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=HANG,
    )


def _cli(project: Path, monkeypatch, *args: str):
    monkeypatch.chdir(project)
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    return CliRunner().invoke(cli, ["run", "--env", "test", *args])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("training.lr=-1", "Error: Parameter training.lr = -1 is invalid: input should be greater than 0."),
        ("training.loss=l1", "Error: Parameter training.loss = 'l1' is invalid: input should be 'bce' or 'mse'."),
        ("training.epochz=3", "Error: Unknown parameter training.epochz (allowed there: batch_size,"),
        ("trainng.epochs=1", "Error: Unknown parameter trainng (allowed there: seed, data_ingestion,"),
        ("seed=-1", "Error: Parameter seed = -1 is invalid: input should be greater than or equal to 0."),
        ("model.latent_dim=0", "Error: Parameter model.latent_dim = 0 is invalid: input should be greater than or equal to 1."),
        ("model.image_size=32", "Error: Parameter model.image_size = 32 is invalid: input should be 28."),
        ("model.num_classes=5", "Error: Parameter model.num_classes = 5 is invalid: input should be 10."),
        ("evaluation.batch_size=0", "Error: Parameter evaluation.batch_size = 0 is invalid"),
        ("training.batch_size=60001", "Error: Parameter training.batch_size = 60001 is invalid: input should be less than or equal to 60000."),
        ("generation.n_samples=10001", "Error: Parameter generation.n_samples = 10001 is invalid: input should be less than or equal to 10000."),
        ("generation.n_samples=10**8", "Error: Parameter generation.n_samples = '10**8' is invalid: input should be a valid integer."),
    ],
)  # fmt: skip
def test_bad_parameters_stop_before_any_work_with_one_line(trained_project, monkeypatch, params, message):
    metrics = trained_project / "data" / "08_reporting" / "metrics.csv"
    before = metrics.stat().st_mtime_ns
    result = _cli(trained_project, monkeypatch, "--params", params)
    assert result.exit_code == 1
    assert message in result.output
    errors = [line for line in result.output.splitlines() if "Error" in line or "ERROR" in line]
    assert errors == [result.output.strip().splitlines()[-1]], result.output  # one line says it
    assert "Traceback" not in result.output
    assert metrics.stat().st_mtime_ns == before


def test_a_truncated_model_is_named_and_nothing_is_half_written(trained_project):
    model_file = trained_project / "data" / "06_models" / "cvae.pt"
    metrics = trained_project / "data" / "08_reporting" / "metrics.csv"
    saved, before = model_file.read_bytes(), metrics.read_text()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(trained_project))
    runs_before = {run.info.run_id: run.info.status for run in client.search_runs(_experiments(client))}
    try:
        model_file.write_bytes(saved[: len(saved) // 2])
        result = _kedro_run_output(trained_project, "--pipeline", "evaluation")
    finally:
        model_file.write_bytes(saved)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert (
        last_line.startswith("Error: ")  # named before anything reads it (its lineage record)
        and "cvae.pt is not the file a run of this project made (its bytes are not those" in last_line
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert metrics.read_text() == before
    assert _no_partial_files(trained_project / "data")

    # refused before the run started: no MLflow run, the earlier ones as they were
    runs = client.search_runs(_experiments(client))
    assert {run.info.run_id: run.info.status for run in runs} == runs_before


def test_a_damaged_raw_file_is_named_with_what_to_do(trained_project):
    labels = trained_project / "data" / "01_raw" / "mnist" / "t10k-labels-idx1-ubyte"
    saved = labels.read_bytes()
    try:
        labels.write_bytes(saved[:-5])
        result = _kedro_run_output(trained_project, "--pipeline", "data_ingestion")
    finally:
        labels.write_bytes(saved)
    assert result.returncode == 1
    assert (
        "t10k-labels-idx1-ubyte has SHA-256" in result.stderr and "Delete it and run again" in result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert _no_partial_files(trained_project / "data")


def test_two_runs_with_the_same_seed_give_the_same_metrics(trained_project):
    metrics = trained_project / "data" / "08_reporting" / "metrics.csv"
    first = metrics.read_text()
    # like the first run, in a process of its own: the same seed and the same number of
    # threads (batch norm's reductions are summed in a thread-dependent order)
    _finish(_kedro_run(trained_project))
    assert metrics.read_text() == first


def _experiments(client: mlflow.MlflowClient) -> list[str]:
    return [experiment.experiment_id for experiment in client.search_experiments()]
