"""Runs recorded on an MLflow tracking server: a real `mlflow server` (SQLite backend,
artifacts served by the server) on a free 127.0.0.1 port, a tiny `kedro run --env server`,
and what a teammate finds through the server's REST API; then a server that cannot be
reached and one that refuses the credentials."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
import yaml

from cvae_mnist.glue.serving import CHAMPION, MODEL_NAME
from mnist_fixtures import BIN, CHILD_ENV, HANG, make_test_project, run_program


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_project(root: Path, uri: str, credentials: dict | None = None) -> Path:
    """A tiny project whose `server` environment (the project's conf/server) points at ``uri``."""
    project = make_test_project(root, env="server", own_store=False)
    settings = project / "conf" / "server" / "mlflow.yml"
    config = yaml.safe_load(settings.read_text())
    config["server"]["mlflow_tracking_uri"] = uri
    if credentials:
        config["server"]["credentials"] = "mlflow_credentials"
        (project / "conf" / "server" / "credentials.yml").write_text(
            yaml.safe_dump({"mlflow_credentials": credentials})
        )
    settings.write_text(yaml.safe_dump(config))
    return project


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_program(project, "kedro", "run", "--env", "server", *args)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    process = subprocess.Popen(
        [BIN / "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
        + ["--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder,
        env={**CHILD_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=(folder / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HANG
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri, folder
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def _api(uri: str, path: str, body: dict | None = None, **query) -> dict:
    url = f"{uri}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def recorded(server, tmp_path_factory):
    uri, folder = server
    project = _server_project(tmp_path_factory.mktemp("project"), uri)
    done = _kedro(project)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return uri, folder, project


def test_the_run_its_parameters_histories_artifacts_and_model_are_on_the_server(recorded):
    uri, folder, project = recorded
    experiment = _api(uri, "experiments/get-by-name", experiment_name="cvae_mnist")["experiment"]
    (run,) = _api(uri, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["training.epochs"] == "2" and params["model.latent_dim"] == "4"
    history = _api(uri, "metrics/get-history", run_id=run_id, metric_key="training.train_loss")["metrics"]
    assert [point["step"] for point in history] == [1, 2]
    artifacts = {f["path"] for f in _api(uri, "artifacts/list", run_id=run_id)["files"]}
    assert {"metrics.csv", "reconstructions.png", "node_seconds.json"} <= artifacts
    models = _api(uri, "logged-models/search", {"experiment_ids": [experiment["experiment_id"]]})["models"]
    assert [m["info"]["name"] for m in models] == [MODEL_NAME]
    alias = _api(uri, "registered-models/alias", name=MODEL_NAME, alias=CHAMPION)["model_version"]
    assert alias["run_id"] == run_id
    # the artifacts live with the server, not in the project
    assert not (project / "mlruns").exists() and not (project / "mlflow.db").exists()
    assert any((folder / "artifacts").rglob("metrics.csv"))


def test_the_champion_is_served_from_the_servers_registry(recorded):
    uri, _, _ = recorded
    found = run_program(
        Path.cwd(), "python", "-m", "cvae_mnist.glue.serving", env={**CHILD_ENV, "MLFLOW_TRACKING_URI": uri}
    ).stdout.strip()
    assert found == f"models:/{MODEL_NAME}@{CHAMPION}"  # what `make serve MLFLOW_TRACKING_URI=...` serves
    previous = mlflow.get_tracking_uri()  # other tests of this process may have set one
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(found)
    finally:
        mlflow.set_tracking_uri(previous)
    (images,) = model.predict([{"digit": 3, "n_samples": 2, "seed": 0}])
    assert len(images) == 2 and len(images[0]) == 28 and len(images[0][0]) == 28


def test_a_server_that_cannot_be_reached_stops_the_run_at_once(tmp_path):
    project = _server_project(tmp_path, f"http://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    done = _kedro(project)
    assert done.returncode == 1 and time.monotonic() - started < 120  # not minutes of retries
    assert "Traceback" not in done.stdout + done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "cannot be reached" in error and "make tracking-server" in error
    assert not list((project / "data").rglob("*.pt"))  # nothing ran


class _Refusing(BaseHTTPRequestHandler):
    sent: list[str | None] = []  # the Authorization header of each request

    def do_GET(self):  # noqa: N802 - http.server's name
        self.sent.append(self.headers.get("Authorization"))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_server_that_refuses_the_credentials_stops_the_run_without_showing_them(tmp_path):
    refusing = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=refusing.serve_forever, daemon=True).start()
    try:
        project = _server_project(
            tmp_path,
            f"http://127.0.0.1:{refusing.server_address[1]}",
            {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret-pw"},
        )
        done = _kedro(project)
    finally:
        refusing.shutdown()
    assert done.returncode == 1
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "refused the credentials (HTTP 401)" in error
    assert "s3cret-pw" not in done.stdout + done.stderr
    # MLflow's client sent them, once: no retries
    assert _Refusing.sent == ["Basic " + base64.b64encode(b"alice:s3cret-pw").decode()]
    assert not list((project / "data").rglob("*.pt"))
