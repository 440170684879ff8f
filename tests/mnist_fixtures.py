"""Tiny synthetic MNIST-like IDX files for tests: real code, fake data, no network."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from cvae_mnist.core.idx import encode_idx
from cvae_mnist.datasets.mnist_raw_dataset import MNIST_FILES
from cvae_mnist.errors import find_user_error

# Seconds after which a process or a wait counts as hung. Only a hang gets this far: no test
# counts on a run's speed (the suite passes on a machine busy five times over).
HANG = 1800


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images whose class ``c`` is a bright bar at row ``2 + 2c``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 10
    images = rng.integers(0, 30, size=(n, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        row = 2 + 2 * int(label)
        image[row : row + 3, 4 + rng.integers(0, 4) : 24] = 255
    return images, labels


def tiny_mnist_files(n_train: int = 120, n_test: int = 40) -> dict[str, bytes]:
    """The four IDX files' bytes, by file name."""
    train_images, train_labels = synthetic_digits(n_train, seed=0)
    test_images, test_labels = synthetic_digits(n_test, seed=1)
    arrays = (train_images, train_labels, test_images, test_labels)
    return {name: encode_idx(array) for name, array in zip(MNIST_FILES, arrays)}


def write_tiny_mnist(folder: Path, **sizes: int) -> dict[str, str]:
    """Write the tiny IDX files into ``folder``; return their SHA-256 by name."""
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, data in tiny_mnist_files(**sizes).items():
        (folder / name).write_bytes(data)
        checksums[name] = hashlib.sha256(data).hexdigest()
    return checksums


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtual environment's programs: kedro, torchrun, mlflow
# no usage data from child processes; log lines unwrapped, so that tests can read them
CHILD_ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "250"}
TINY_MODEL = {"image_size": 28, "num_classes": 10, "latent_dim": 4, "base_channels": 4}
TINY_TRAINING = {"epochs": 2, "batch_size": 32, "test_batch_size": 32, "device": "cpu"}
TINY_PRIOR = {
    "kind": "flow",
    "flow_transforms": 1,
    "flow_hidden": 16,
    "epochs": 2,
    "batch_size": 64,
    "pseudo_inputs": 4,  # the blend with training codes, as the default
}


def make_test_project(
    root: Path,
    training: dict | None = None,
    n_train: int = 120,
    n_test: int = 40,
    env: str = "test",
    own_store: bool = True,
) -> Path:
    """A copy of the project's configuration in ``root`` with tiny IDX files and an
    environment ``env`` (``local`` is the default one): a tiny model and training, and an
    MLflow store of the copy's own. ``own_store`` names that store by its absolute path (so a
    test process may run sessions from any folder); otherwise the base ``mlflow.yml``'s
    relative one serves, as for a user who runs `kedro run` in the project."""
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    (root / "src").mkdir()  # the package itself is the installed one; the served model
    (root / "src" / "cvae_mnist").symlink_to(REPO / "src" / "cvae_mnist")  # copies its code
    checksums = write_tiny_mnist(root / "data" / "01_raw" / "mnist", n_train=n_train, n_test=n_test)
    folder = root / "conf" / env
    folder.mkdir(exist_ok=True)
    catalog = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    catalog["mnist_raw"].update(sha256=checksums, sources=[])
    (folder / "catalog.yml").write_text(yaml.safe_dump({"mnist_raw": catalog["mnist_raw"]}))
    parameters = {
        "model": TINY_MODEL,
        "prior": TINY_PRIOR,
        "training": {**TINY_TRAINING, **(training or {})},
        "evaluation": {"batch_size": 16, "device": "cpu", "samples_per_class": 20},
        "classifier": {"epochs": 1},
    }
    (folder / "parameters.yml").write_text(yaml.safe_dump(parameters))
    if own_store:  # merged key by key with conf/base/mlflow.yml
        (folder / "mlflow.yml").write_text(
            yaml.safe_dump({"server": {"mlflow_tracking_uri": tracking_uri(root)}})
        )
    return root


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project / 'mlflow.db'}"


def run_session(project: Path, pipeline: str | None = None, params: dict | None = None) -> None:
    """``kedro run --env test [--pipeline pipeline] [--params ...]`` in this process, hooks included."""
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="test", runtime_params=params) as session:
        session.run(pipeline_name=pipeline)


@contextmanager
def raises_user_error(kind, match=None):
    """Like ``pytest.raises``, for user errors that Kedro's dataset wrapper re-raises."""
    with pytest.raises(Exception, match=match) as excinfo:
        yield excinfo
    assert isinstance(find_user_error(excinfo.value), kind)


def run_program(
    project: Path, program: str, *args: str, timeout: float = HANG, **popen
) -> subprocess.CompletedProcess:
    """``program`` of the virtual environment (``kedro``, ``torchrun``, ...) with ``args``, run in
    ``project`` as a user would; its output captured, its exit code left to the test."""
    return subprocess.run(
        [BIN / program, *args],
        cwd=project,
        env=popen.pop("env", CHILD_ENV),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **popen,
    )
