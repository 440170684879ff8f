"""The logged model, served by MLflow's own server on a loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from cvae_mnist.serving import MAX_SAMPLES_PER_REQUEST
from mnist_fixtures import make_test_project, tracking_uri

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project trained on tiny data by `kedro run`; its environment and model URI."""
    project = make_test_project(tmp_path_factory.mktemp("served"))
    environment = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "1",
        "MLFLOW_TRACKING_URI": tracking_uri(project),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow starts `uvicorn` from PATH
    }
    subprocess.run(
        [BIN / "kedro", "run", "--env", "test"],
        cwd=project,
        env=environment,
        check=True,
        capture_output=True,
        timeout=300,
    )
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(project))
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    (model,) = client.search_logged_models(experiment_ids=experiments)
    return project, environment, f"models:/{model.model_id}"


@pytest.fixture(scope="module")
def server(trained):
    project, environment, model_uri = trained
    port = _free_port()
    process = subprocess.Popen(
        [
            BIN / "mlflow",
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=project,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, "the model server exited"
            assert time.monotonic() < deadline, "the model server did not answer /ping within 180 s"
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _good_request(port: int, seed: int = 0) -> np.ndarray:
    status, body = _post(port, {"inputs": [{"digit": 6, "n_samples": 3, "seed": seed}]})
    assert status == 200, body
    predictions = np.asarray(body["predictions"])
    assert predictions.shape == (1, 3, 28, 28)  # one answer row: the requested count of 28x28 images
    return predictions[0]


BAD_REQUESTS = [
    ({"digit": 10, "n_samples": 1}, "digit"),
    ({"digit": -1, "n_samples": 1}, "digit"),
    ({"digit": 3, "n_samples": 0}, "n_samples"),
    ({"digit": 3, "n_samples": -2}, "n_samples"),
    ({"digit": 3, "n_samples": MAX_SAMPLES_PER_REQUEST + 1}, "n_samples"),
    ({"n_samples": 1}, "digit"),
    ({"digit": 3}, "n_samples"),
    ({"digit": "six", "n_samples": 1}, "digit"),
    ({"digit": 2.5, "n_samples": 1}, "digit"),
    ({"digit": 3, "n_samples": 1, "seed": -4}, "seed"),
]


def test_serves_digits_rejects_bad_requests_and_keeps_serving(server):
    images = _good_request(server)
    assert images.min() >= 0.0 and images.max() <= 1.0

    for fields, named in BAD_REQUESTS:
        status, body = _post(server, {"inputs": [fields]})
        assert status == 400, (fields, body)
        assert named in body["message"], (fields, body["message"])

    np.testing.assert_array_equal(_good_request(server), images)  # same seed, same images, still serving
    assert not np.array_equal(_good_request(server, seed=1), images)


def test_loads_in_python_with_pyfunc(trained):
    _, environment, model_uri = trained
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(
        environment["MLFLOW_TRACKING_URI"]
    )  # earlier sessions in this process set another
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    answer = np.asarray(model.predict([{"digit": 2, "n_samples": 4, "seed": 5}]))
    assert answer.shape == (1, 4, 28, 28) and 0.0 <= answer.min() and answer.max() <= 1.0
    np.testing.assert_array_equal(
        np.asarray(model.predict([{"digit": 2, "n_samples": 4, "seed": 5}])), answer
    )
    with pytest.raises(mlflow.exceptions.MlflowException, match="digit"):
        model.predict([{"digit": 12, "n_samples": 1}])
