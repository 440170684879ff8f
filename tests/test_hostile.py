"""A hostile but fair user: concurrent runs, stale inputs, interrupts, names that do not
exist, unreadable configuration, unwritable folders, secrets. Real `kedro run` processes."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from click.testing import CliRunner
from kedro.framework.startup import bootstrap_project
from kedro.io import DatasetError

from cvae_mnist.cli import cli, user_error
from cvae_mnist.core.model import CVAE
from cvae_mnist.datasets import CVAEDataset, torch_dataset
from cvae_mnist.errors import ConfigurationError, RunInterrupted
from cvae_mnist.glue.hooks import lock_paths
from cvae_mnist.glue.saving import write_tensors
from cvae_mnist.params import ModelParams
from mnist_fixtures import BIN, CHILD_ENV, HANG, make_test_project, run_program, run_session, tracking_uri

KEDRO = str(BIN / "kedro")


def _run(project: Path, *args: str, **popen) -> subprocess.CompletedProcess:
    return run_program(project, "kedro", "run", "--env", "test", *args, timeout=HANG, **popen)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exit code 1, without a traceback, with one `Error:` line."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def _runs(project: Path) -> list:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(project))
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"]
    )


def _temporary_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if ".tmp-" in path.name]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_test_project(tmp_path_factory.mktemp("hostile"))
    result = _run(project)
    assert result.returncode == 0, result.stderr[-3000:]
    return project


def test_a_second_run_into_the_same_folders_stops_at_once_and_the_first_finishes(tmp_path, monkeypatch):
    project = make_test_project(tmp_path)
    first = subprocess.Popen(
        [KEDRO, "run", "--env", "test"],
        cwd=project,
        env=CHILD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, holder = lock_paths(project / "data" / "06_models")
    deadline = time.monotonic() + HANG
    while (
        not (holder.exists() and f"pid {first.pid}," in holder.read_text())
        and first.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # held mid-run, however fast this machine is
    try:
        line = _cli_error(project, monkeypatch, "--params", "seed=2")
        assert f"Another kedro run (pid {first.pid}, --env test, since " in line and "is using" in line, line
        # nor may another run rewrite the inputs the first one reads
        ingestion = _cli_error(project, monkeypatch, "--pipeline", "data_ingestion")
        assert f"is using {project / 'data' / '05_model_input'}" in ingestion, ingestion
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=HANG)
    assert first.returncode == 0, stderr[-3000:]
    (run,) = _runs(project)  # the refused runs left no MLflow run
    assert run.data.params["seed"] == "1" and run.info.status == "FINISHED"
    assert not holder.exists()  # released, and no holder named any more
    assert not [path for path in (project / "data").rglob("*") if "lock" in path.name]  # none in sight


def test_the_evaluation_scores_the_model_object_its_own_run_trained(tmp_path, monkeypatch):
    project = make_test_project(tmp_path)
    loads = []
    read = torch_dataset.from_checkpoint
    monkeypatch.setattr(torch_dataset, "from_checkpoint", lambda *args: loads.append(args) or read(*args))
    run_session(project)
    assert (project / "data" / "08_reporting" / "metrics.csv").exists()
    assert loads == []  # every node after training used the model in memory, never a re-read of cvae.pt
    run_session(project, "evaluation")
    assert len(loads) == 1  # an evaluation alone reads it once, for all its nodes


def test_a_stale_input_stops_the_run_naming_it_and_the_command_that_rebuilds_it(project, monkeypatch):
    metrics = project / "data" / "08_reporting" / "metrics.csv"
    classifier = project / "data" / "06_models" / "digit_classifier.pt"
    shared = classifier.read_bytes()
    run_session(project, "data_ingestion", {"data_ingestion": {"n_test": 20}})
    before = metrics.read_text()
    assert _cli_error(project, monkeypatch, "--pipeline", "evaluation") == (
        "Error: data/05_model_input/mnist_test.pt was made with data_ingestion.n_test = 20, and the parameters "
        "now give null: rebuild it with `kedro run --pipeline data_ingestion --env test`, or run with the "
        "parameters it was made with."
    )
    assert metrics.read_text() == before
    # a model trained on other data is stale too, and a subset's classifier never replaces the shared one
    run_session(project, params={"data_ingestion": {"n_train": 120}})
    assert classifier.read_bytes() == shared
    run_session(project, "data_ingestion")
    line = _cli_error(project, monkeypatch, "--pipeline", "evaluation")
    assert line.startswith("Error: data/06_models/cvae.pt was made with data_ingestion.n_train = 120"), line
    assert "rebuild it with `kedro run --pipeline training --env test`" in line
    run_session(project, "training")  # the command it names
    run_session(project, "evaluation")


def _cli_error(project: Path, monkeypatch, *args: str) -> str:
    """`kedro run --env test *args` in this process, refused: its one `Error:` line."""
    result = _cli(project, monkeypatch, "--env", "test", *args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output[-3000:]
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def test_a_missing_input_names_the_command_with_the_environment(tmp_path):
    fresh = make_test_project(tmp_path / "fresh")
    line = _one_error_line(_run(fresh, "--pipeline", "evaluation"))
    assert line == (
        "Error: data/06_models/cvae.pt does not exist. Run `kedro run --pipeline training --env test` first."
    )


def test_a_model_made_elsewhere_is_not_scored_as_ours(project):
    model = project / "data" / "06_models" / "cvae.pt"
    metrics = project / "data" / "08_reporting" / "metrics.csv"
    ours, before = model.read_bytes(), metrics.read_text()
    # another architecture, saved over the model without the record of a run that made it
    CVAEDataset(filepath=str(model)).save(CVAE(ModelParams(architecture="report", latent_dim=8)))
    record = model.with_name("cvae.pt.lineage.json")
    kept = record.read_bytes()
    try:
        line = _one_error_line(_run(project, "--pipeline", "evaluation"))
        assert line == (
            "Error: data/06_models/cvae.pt is not the file a run of this project made (its bytes are "
            "not those that data/06_models/cvae.pt.lineage.json records: it was damaged or replaced "
            "since the run that made it). Rebuild it with `kedro run --pipeline training --env test`."
        )
        record.unlink()  # and with no record at all
        line = _one_error_line(_run(project, "--pipeline", "evaluation"))
        assert "(there is no data/06_models/cvae.pt.lineage.json: it was made elsewhere" in line
        assert metrics.read_text() == before  # nothing scored, nothing overwritten
    finally:
        model.write_bytes(ours)
        record.write_bytes(kept)
    assert _run(project, "--pipeline", "evaluation").returncode == 0  # its own model again


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_is_marked_killed_keeps_its_checkpoint_and_no_temporary_file(
    tmp_path, signal_number
):
    project = make_test_project(tmp_path, training={"epochs": 400}, n_train=600)
    process = subprocess.Popen(
        [KEDRO, "run", "--env", "test"],
        cwd=project,
        env=CHILD_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoint = project / "data" / "06_models" / "checkpoint.pt"
    deadline = time.monotonic() + HANG
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal_number)
    output, _ = process.communicate(timeout=HANG)
    assert process.returncode == 128 + signal_number, output[-3000:]
    assert f"Error: Interrupted by {signal.Signals(signal_number).name}." in output
    (run,) = _runs(project)
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == signal.Signals(signal_number).name
    assert torch.load(checkpoint, weights_only=True)["epoch"] >= 1
    assert not _temporary_files(project / "data")


def test_a_device_that_is_not_there_is_refused_before_training(project):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = project / "data" / "06_models" / "cvae.pt"
    before = model.stat().st_mtime_ns
    line = _one_error_line(_run(project, "--params", "evaluation.device=cuda"))
    assert "evaluation.device = 'cuda', but no CUDA device is available here" in line
    assert model.stat().st_mtime_ns == before


def _cli(project: Path, monkeypatch, *args: str):
    """`kedro run` in this process, the project bootstrapped as Kedro's command line does."""
    monkeypatch.chdir(project)
    bootstrap_project(project)
    return CliRunner().invoke(cli, ["run", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--pipeline", "nosuch"],
            "Error: There is no pipeline 'nosuch'; the pipelines are: data_ingestion, evaluation,",
        ),
        (["--env", "nosuch"], "Error: There is no environment 'nosuch' ("),
        (["--params", "seed='1"], 'Error: --params "seed=\'1" cannot be read (while scanning a quoted'),
    ],
)
def test_a_pipeline_or_environment_that_does_not_exist(project, monkeypatch, args, message):
    result = _cli(project, monkeypatch, *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("parameters_more.yml", "training:\n  epochs: [1\n", "Error: Invalid YAML or JSON file"),
        # a section that is not a mapping, in a second parameters file
        ("parameters_more.yml", "training: 5\n", "Error: Parameter training = 5 is invalid"),
        ("parameters_more.yml", "training:\n", "Error: Parameter training is empty: it must be a mapping"),
        (
            "parameters_more.yml",
            "- 1\n- 2\n",
            "Error: conf/test/parameters_more.yml holds a list: a parameters",
        ),
        (
            "mlflow_more.yml",
            "tracking:\n  experimnt:\n    name: x\n",
            "is not a valid kedro-mlflow configuration: tracking.experimnt: unknown key.",
        ),
        (
            "catalog_more.yml",
            "metrics:\n  typo: pandas.CSVDataset\n",
            "'type' is missing from dataset catalog",
        ),
        (
            "catalog_more.yml",
            "metrics:\n  type: pandas.NoSuch\n  filepath: m.csv\n",
            "Dataset 'NoSuch' not found",
        ),
    ],
)
def test_a_configuration_file_kedro_cannot_use_is_one_line(project, monkeypatch, file, text, message):
    extra = project / "conf" / "test" / file
    extra.write_text(text)
    try:
        result = _cli(project, monkeypatch, "--env", "test")
    finally:
        extra.unlink()
    assert result.exit_code == 1 and message in result.output, result.output[-3000:]
    assert "Traceback" not in result.output and result.output.strip().splitlines()[-1].startswith("Error:")


def _raised_from(cause: Exception) -> DatasetError:
    """A DatasetError raised while ``cause`` was handled, as Kedro wraps one."""
    try:
        try:
            raise cause
        except Exception as inner:
            raise DatasetError("wording Kedro may change") from inner
    except DatasetError as error:
        return error


def test_only_a_catalog_entry_kedro_cannot_build_is_a_users_mistake():
    """Known by the chain of causes, not by Kedro's wording: a DatasetError over DatasetErrors
    only is a catalog entry Kedro could not build; one over another exception is a dataset
    failing at its work, a bug that keeps its traceback."""
    unbuildable = _raised_from(DatasetError("Class 'pandas.NoSuch' not found"))
    assert isinstance(user_error(unbuildable), ConfigurationError)
    assert user_error(_raised_from(KeyError("images"))) is None


@pytest.mark.parametrize("damage", ["not a database", "read-only"])
def test_an_mlflow_store_that_cannot_be_used_is_one_line(project, tmp_path, damage):
    store = tmp_path / "mlflow.db"
    if damage == "not a database":
        store.write_bytes(os.urandom(5000))
    else:
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}").search_experiments()  # a valid store
        undo = _unwritable(store)
    settings = project / "conf" / "test" / "mlflow.yml"
    kept = settings.read_text()
    settings.write_text(yaml.safe_dump({"server": {"mlflow_tracking_uri": f"sqlite:///{store}"}}))
    try:
        line = _one_error_line(_run(project, "--pipeline", "data_ingestion"))
    finally:
        settings.write_text(kept)
        if damage == "read-only":
            subprocess.run(undo, check=True)
    cause = "file is not a database" if damage == "not a database" else "attempt to write a readonly database"
    assert line.startswith(f"Error: The MLflow store sqlite:///{store} cannot be used ({cause}): "), line


def _unwritable(folder: Path) -> list[str]:
    """Make ``folder`` unwritable (root can still write where modes forbid it: the immutable flag)."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        return ["chattr", "-i", str(folder)]
    folder.chmod(0o555)
    return ["chmod", "755", str(folder)]


def test_a_folder_the_run_cannot_write_stops_it_before_any_work(project):
    folder = project / "data" / "08_reporting"
    metrics = (folder / "metrics.csv").read_text()
    undo = _unwritable(folder)
    try:
        if os.access(folder, os.W_OK) and os.geteuid() != 0:
            pytest.skip("cannot make a folder unwritable here")
        result = _run(project, "--pipeline", "evaluation")
    finally:
        subprocess.run(undo, check=True)
    line = _one_error_line(result)
    assert line.startswith(f"Error: Cannot write {folder}: permission denied."), line
    assert (folder / "metrics.csv").read_text() == metrics and not _temporary_files(folder)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    project = make_test_project(tmp_path, n_train=3000)
    assert _run(project, "--pipeline", "data_ingestion").returncode == 0  # creates the MLflow store first
    (project / "data" / "05_model_input" / "mnist_train.pt").unlink()
    store = (project / "mlflow.db").stat().st_size

    def limit_file_size() -> None:  # writes past the limit fail like on a full disk (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (store + 2**20, store + 2**20))

    line = _one_error_line(_run(project, "--pipeline", "data_ingestion", preexec_fn=limit_file_size))
    assert line.startswith(
        f"Error: Cannot write {project}/data/05_model_input/mnist_train.pt: File too large."
    ), line
    assert not (project / "data" / "05_model_input" / "mnist_train.pt").exists()
    assert not _temporary_files(project / "data")


def test_credentials_in_a_mirror_url_are_never_shown_or_stored(tmp_path):
    project = make_test_project(tmp_path)
    for name in (project / "data" / "01_raw" / "mnist").iterdir():
        name.unlink()  # nothing local: the mirror is asked
    (project / "conf" / "test" / "globals.yml").write_text(
        'mnist_mirror: "http://alice:s3cret@127.0.0.1:9/mnist"\n'
    )
    result = _run(project)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Could not obtain the MNIST file(s)" in output
    assert "http://***@127.0.0.1:9/mnist" in output
    log = (project / "info.log").read_text() if (project / "info.log").exists() else ""
    (run,) = _runs(project)
    assert "s3cret" not in output + log + json.dumps(run.data.tags)


def test_a_write_cleans_what_a_killed_writer_left_and_a_foreign_file_gets_plain_advice(tmp_path):
    target = tmp_path / "cvae.pt"
    leftover = tmp_path / ".cvae.tmp-abc123.pt"
    leftover.write_bytes(b"")  # a writer killed between creating and renaming its file
    write_tensors({"w": torch.ones(2)}, target)
    assert not leftover.exists() and target.exists()
    target.write_bytes(b"not a torch file")
    with pytest.raises(Exception) as error:
        CVAEDataset(filepath=str(target)).load()
    assert "weights_only" not in str(error.value) and "Delete it and produce it again" in str(error.value)


def test_ctrl_c_outside_the_runs_handlers_ends_its_mlflow_run_killed_with_exit_130(tmp_path, capsys):
    # as when Ctrl-C comes after the project's handlers are restored, at the very end of a run
    from cvae_mnist.cli import _report_user_errors  # noqa: PLC0415

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.MlflowClient().create_experiment("interrupted")  # not the process's active one

        def interrupted_at_the_end(**options):
            mlflow.start_run(experiment_id=experiment)
            raise KeyboardInterrupt

        with pytest.raises(SystemExit) as stopped:
            _report_user_errors(interrupted_at_the_end)()
        assert stopped.value.code == 130 and mlflow.active_run() is None
        (run,) = mlflow.search_runs([experiment], output_format="list")
        assert run.info.status == "KILLED"
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
        assert errors == [errors[0]] and errors[0].startswith("Error: Interrupted by SIGINT.")
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [(RunInterrupted(signal.SIGTERM, "SIGTERM"), "KILLED", 143), (RuntimeError("a bug"), "FAILED", None)],
    ids=["a signal", "a bug"],
)
def test_a_run_the_hooks_could_not_close_is_not_left_for_mlflow_to_call_finished(
    tmp_path, raised, status, code
):
    """torchrun's SIGTERM can land while another hook handles the pipeline's error, before the
    MLflow hook closes the run; MLflow would then end it as FINISHED when the process exits
    (seen once under torchrun in CI). The command closes it with the true status."""
    from cvae_mnist.cli import _report_user_errors  # noqa: PLC0415

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.MlflowClient().create_experiment("unclosed")

        def failing_with_an_open_run(**options):
            mlflow.start_run(experiment_id=experiment)
            raise DatasetError("a node failed") from raised  # as Kedro wraps what a node raises

        with pytest.raises((SystemExit, DatasetError)) as stopped:
            _report_user_errors(failing_with_an_open_run)()
        assert mlflow.active_run() is None
        (run,) = mlflow.search_runs([experiment], output_format="list")
        assert run.info.status == status
        if code is not None:
            assert stopped.value.code == code
    finally:
        mlflow.set_tracking_uri(previous)
