"""Training with torchrun: real `torchrun --standalone --nproc_per_node 2` processes (gloo, CPU)
on a tiny project, against one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch

from cvae_mnist.core.runtime import World
from cvae_mnist.engine.recipe import CVAEObjective, scaled_lr
from cvae_mnist.engine.trainer import batches
from cvae_mnist.params import TrainingParams
from mnist_fixtures import BIN, CHILD_ENV, HANG, make_test_project, run_program, run_session, tracking_uri

# fp32 and no batch norm: then N processes compute exactly what one process computes with
# the global batch, but for the order of floating-point sums (batch norm keeps per-rank
# statistics on the CPU)
# a constant learning rate, so that a run of 1 epoch resumed to 2 can match a 2-epoch run (a
# schedule spans the epochs)
COMPARABLE = "model.normalization=none,training.mixed_precision=false,training.lr_scaling=none,training.lr_schedule=constant"
# weights of 2 processes x 32 images against 1 process x 64, after 2 epochs (measured: 1.3e-7)
TOLERANCE = 1e-5


def test_the_ranks_shares_of_every_batch_are_disjoint_and_make_the_global_batch():
    data = {"images": torch.arange(70.0)[:, None], "labels": torch.arange(70)}
    for seed in (0, 1):
        whole = [labels for _, labels in batches(data, 8, torch.Generator().manual_seed(seed))]
        shares = [
            [labels for _, labels in batches(data, 4, torch.Generator().manual_seed(seed), World(rank, 2))]
            for rank in (0, 1)
        ]
        assert len(shares[0]) == len(shares[1]) == len(whole) == 9  # 70 images in global batches of 8
        for batch, first, second in zip(whole, *shares):
            assert len(first) == len(second) and not set(first.tolist()) & set(second.tolist())
            assert torch.equal(torch.cat([first, second]), batch[: len(first) + len(second)])
    # an odd number of images: the one left over is left out, so both ranks take equal steps
    assert sum(len(b) for _, b in batches({k: v[:69] for k, v in data.items()}, 4, world=World(1, 2))) == 34


def test_each_rank_takes_its_share_of_the_global_batchs_noise():
    class Recorder(torch.nn.Module):
        config = type("config", (), {"latent_dim": 3})

        def forward(self, x, y, noise=None):
            self.noise = noise
            return torch.zeros_like(x), torch.zeros(len(x), 3), torch.zeros(len(x), 3)

    shares, images = [], torch.rand(4, 1, 2, 2)
    for rank in (0, 1):
        torch.manual_seed(0)
        model = Recorder()
        CVAEObjective("bce", 1.0, world=World(rank, 2))(model, images, torch.zeros(4), 0)
        shares.append(model.noise)
    torch.manual_seed(0)
    assert torch.equal(torch.cat(shares), torch.randn(8, 3))


def test_the_learning_rate_rule():
    assert scaled_lr(TrainingParams(lr=1e-3, lr_scaling="sqrt"), 4) == pytest.approx(2e-3)
    assert scaled_lr(TrainingParams(lr=1e-3, lr_scaling="linear"), 4) == pytest.approx(4e-3)
    assert scaled_lr(TrainingParams(lr=1e-3, lr_scaling="none"), 4) == 1e-3
    assert scaled_lr(TrainingParams(lr=1e-3), 1) == 1e-3
    assert scaled_lr(TrainingParams(lr=1e-3), 4) == pytest.approx(2e-3)  # the default: sqrt


def _project(root: Path) -> Path:
    project = make_test_project(root, n_train=128, n_test=40)
    run_session(project, "data_ingestion")
    return project


TORCHRUN = ("--standalone", "--nproc_per_node", "2", "-m", "cvae_mnist", "run")


def _torchrun(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_program(project, "torchrun", *TORCHRUN, *args, timeout=HANG)


def _weights(project: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(project / "data" / "06_models" / "cvae.pt", weights_only=True)["state_dict"]
    return {key: value for key, value in saved.items() if not key.startswith("prior.")}  # fitted after


def _training_runs(project: Path) -> list:
    """The MLflow runs of the training pipeline (the set-up's data_ingestion run left out)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(project))
    experiments = [e.experiment_id for e in client.search_experiments() if e.name == "cvae_mnist"]
    runs = client.search_runs(experiments) if experiments else []
    return [run for run in runs if " training " in run.info.run_name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same training three ways: two processes; one process with the same global batch;
    two processes stopped after epoch 1 and resumed."""
    two, one, resumed = (_project(tmp_path_factory.mktemp(name)) for name in ("two", "one", "resumed"))
    runs = {"two": _torchrun(two, "--pipeline", "training", "--env", "test", "--params", COMPARABLE)}
    runs["one"] = run_program(
        one, "kedro", "run", "--pipeline", "training", "--env", "test", "--params",
        f"{COMPARABLE},training.batch_size=64,training.test_batch_size=64",
    )  # fmt: skip
    runs["first epoch"] = _torchrun(
        resumed, "--pipeline", "training", "--env", "test", "--params", f"{COMPARABLE},training.epochs=1"
    )
    runs["resumed"] = _torchrun(
        resumed, "--pipeline", "training", "--env", "test", "--params", f"{COMPARABLE},training.resume=true"
    )
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}: {(run.stdout + run.stderr)[-3000:]}"
    return {"two": two, "one": one, "resumed": resumed}, runs


def test_two_processes_train_what_one_trains_with_the_same_global_batch(trained):
    projects, runs = trained
    output = runs["two"].stdout + runs["two"].stderr
    for rank in (0, 1):
        assert f"rank {rank} of 2 trains on 32 of every 64 images" in output
    two, one = _weights(projects["two"]), _weights(projects["one"])
    assert two.keys() == one.keys()
    for key in two:
        torch.testing.assert_close(two[key], one[key], atol=TOLERANCE, rtol=0, msg=key)
    history = json.loads((projects["two"] / "data" / "08_reporting" / "training_history.json").read_text())
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_two_machines_train_what_one_process_trains_with_the_global_batch(trained, tmp_path):
    """Two torchrun "nodes" of one process each, as the README tells a cluster user to start
    them (c10d rendezvous on 127.0.0.1), in one project folder: whichever becomes rank 0
    writes there."""
    projects, _ = trained
    project = _project(tmp_path)
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = [
        str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_id", "test",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "cvae_mnist", "run",
        "--pipeline", "training", "--env", "test", "--params", COMPARABLE,
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            node, cwd=project, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=HANG)[0] for job in nodes]
    assert [job.returncode for job in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    two_nodes, one = _weights(project), _weights(projects["one"])
    for key in one:
        torch.testing.assert_close(two_nodes[key], one[key], atol=TOLERANCE, rtol=0, msg=key)


def test_only_rank_0_writes_one_model_and_one_mlflow_run(trained):
    projects, _ = trained
    models = sorted(p.name for p in (projects["two"] / "data" / "06_models").glob("*.pt"))
    assert models == ["checkpoint.pt", "cvae.pt"]
    (run,) = _training_runs(projects["two"])
    assert run.info.status == "FINISHED" and run.data.tags["processes"] == "2"
    assert run.data.params["training.batch_size"] == "32"


def test_a_resumed_torchrun_training_ends_with_the_same_weights(trained):
    projects, _ = trained
    resumed, straight = _weights(projects["resumed"]), _weights(projects["two"])
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=0, rtol=0, msg=key)


def test_more_processes_than_images_is_one_line(tmp_path):
    project = _project(tmp_path)
    done = _torchrun(
        project,
        "--pipelines",
        "data_ingestion,training",
        "--env",
        "test",
        "--params",
        "data_ingestion.n_train=1",
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: torchrun started 2 processes, but the training set has only 1: every process needs a "
        "share of each batch. Start fewer processes (--nproc_per_node) or use more data."
    ]
    assert not (project / "data" / "06_models" / "cvae.pt").exists()


def test_a_rank_that_dies_stops_the_others_and_is_named(tmp_path):
    project = _project(tmp_path)
    job = subprocess.Popen(
        [
            BIN / "torchrun",
            *TORCHRUN,
            *("--pipeline", "training", "--env", "test", "--params", "training.epochs=1000"),
        ],
        cwd=project,
        env=CHILD_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoint = project / "data" / "06_models" / "checkpoint.pt"
    deadline = time.monotonic() + HANG
    while not checkpoint.exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "training did not start"
    workers = [pid for pid in _children(job.pid) if _environ(pid).get("RANK") == "1"]
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    output, _ = job.communicate(timeout=HANG)  # no hang
    assert job.returncode != 0, output[-3000:]
    root_cause = output.split("Root Cause")[-1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "SIGKILL" in root_cause, output[-3000:]
    (run,) = _training_runs(project)
    assert run.info.status in ("KILLED", "FAILED"), (run.info.status, output[-3000:])
    assert checkpoint.exists()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        pairs = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(pair.decode(errors="replace").split("=", 1) for pair in pairs if b"=" in pair)
