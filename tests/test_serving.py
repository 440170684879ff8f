"""The registered model, served on a loopback port by MLflow's scoring server behind our guard
(``cvae_mnist.glue.model_server``, as `make serve` does)."""

from __future__ import annotations

import asyncio
import http.client
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

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import psutil
import pytest
import torch
from mlflow.exceptions import MlflowException

from cvae_mnist.glue import model_server, serving
from cvae_mnist.glue.model_server import RequestGuard
from cvae_mnist.glue.serving import (
    CHAMPION,
    DEADLINE,
    MAX_IMAGES_PER_REQUEST,
    MAX_SAMPLES_PER_ROW,
    MODEL_NAME,
)
from mnist_fixtures import HANG, make_test_project, tracking_uri

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
        with urllib.request.urlopen(request, timeout=HANG) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _kedro(project: Path, environment: dict, *args: str) -> None:
    subprocess.run(
        [BIN / "kedro", "run", *args],
        cwd=project,
        env=environment,
        check=True,
        capture_output=True,
        timeout=HANG,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project whose default run (conf/local: tiny data) registered the champion, then
    a run of another environment; its environment variables and the champion's URI."""
    project = make_test_project(tmp_path_factory.mktemp("served"), env="local")
    for name in ("catalog", "parameters", "mlflow"):
        (project / "conf" / "test").mkdir(exist_ok=True)
        (project / "conf" / "test" / f"{name}.yml").write_text(
            (project / "conf" / "local" / f"{name}.yml").read_text()
        )
    (project / "conf" / "test" / "globals.yml").write_text(
        "folders:\n  models: data/06_models/test\n  reporting: data/08_reporting/test\n"
    )
    environment = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "1",
        "MLFLOW_TRACKING_URI": tracking_uri(project),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow starts `uvicorn` from PATH
    }
    _kedro(project, environment)  # a full default run: registers its model as the champion
    _kedro(project, environment, "--env", "test")  # like `make smoke`: logs a model, registers none
    uri = subprocess.run(
        [BIN / "python", "-m", "cvae_mnist.glue.serving"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return project, environment, uri


def test_only_the_default_run_registered_its_model_as_the_champion(trained):
    project, _, uri = trained
    assert uri == f"models:/{MODEL_NAME}@{CHAMPION}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(project))
    (version,) = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version == version.version
    run = client.get_run(version.run_id)
    assert run.data.tags["env"] == "local" and run.info.run_name.startswith("local default ")
    logged = mlflow.MlflowClient(tracking_uri=tracking_uri(project)).get_logged_model(
        version.source.split("/")[-1]
    )
    assert {"test.bce_per_image", "test.fid"} <= {metric.key for metric in logged.metrics}


def test_the_logged_model_holds_no_pickle_and_its_weights_cannot_run_code(trained, tmp_path):
    project, environment, uri = trained
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(environment["MLFLOW_TRACKING_URI"])
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
        assert "loader_module: mlflow.pyfunc.loaders.code_model" in (local / "MLmodel").read_text()
        assert (local / "served_model.py").exists()  # the model is code, read from the package
        assert not [p for p in local.rglob("*") if p.suffix in {".pkl", ".pickle", ".cloudpickle"}]
        model = mlflow.pyfunc.load_model(str(local))
        answer = np.asarray(model.predict([{"digit": 2, "n_samples": 4, "seed": 5}]))
        assert answer.shape == (1, 4, 28, 28) and 0.0 <= answer.min() and answer.max() <= 1.0

        class Payload:  # a pickle that would write a file when unpickled
            def __reduce__(self):
                return (Path(tmp_path / "owned").write_text, ("code ran",))

        torch.save({"config": {}, "state_dict": Payload()}, next(local.rglob("cvae.pt")))
        with pytest.raises(
            Exception, match=r"cvae.pt is truncated, corrupted or not a file this project wrote"
        ):
            mlflow.pyfunc.load_model(str(local))
        assert not (tmp_path / "owned").exists()
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def server(trained):
    project, environment, uri = trained
    port = _free_port()
    process = subprocess.Popen(
        [BIN / "python", "-m", "cvae_mnist.glue.model_server", uri, "--port", str(port)],
        cwd=project,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    try:
        deadline = time.monotonic() + HANG
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
        yield port, psutil.Process(process.pid)
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
    ({"digit": 3, "n_samples": MAX_SAMPLES_PER_ROW + 1}, "n_samples"),
    ({"n_samples": 1}, "digit"),
    ({"digit": 3}, "n_samples"),
    ({"digit": "six", "n_samples": 1}, "digit"),
    ({"digit": 2.5, "n_samples": 1}, "digit"),
    ({"digit": 3, "n_samples": 1, "seed": -4}, "seed"),
    ({"digit": 3, "n_samples": 1, "seed": 2**64}, "seed"),
]


def test_serves_digits_rejects_bad_requests_without_stack_traces_and_keeps_serving(server):
    port, _ = server
    images = _good_request(port)
    assert images.min() >= 0.0 and images.max() <= 1.0
    for fields, named in BAD_REQUESTS:
        status, body = _post(port, {"inputs": [fields]})
        assert status == 400, (fields, body)
        assert named in body["message"], (fields, body["message"])
        assert "stack_trace" not in body and "Traceback" not in json.dumps(body), (fields, body)
    np.testing.assert_array_equal(_good_request(port), images)  # same seed, same images, still serving
    assert not np.array_equal(_good_request(port, seed=1), images)


def _memory(process: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def test_a_request_over_the_cap_is_refused_at_once_and_the_cap_is_served_in_bounded_memory(server):
    port, process = server
    _good_request(port)
    before = _memory(process)
    rows = [{"digit": 1, "n_samples": MAX_SAMPLES_PER_ROW, "seed": 0}] * 1000  # 256,000 images asked
    status, body = _post(port, {"inputs": rows})
    assert status == 400 and f"at most {MAX_IMAGES_PER_REQUEST}" in body["message"], body
    assert "stack_trace" not in body
    assert _memory(process) - before < 200 * 2**20  # refused before any image was drawn
    at_cap = [{"digit": 7, "n_samples": MAX_SAMPLES_PER_ROW, "seed": 1}] * (
        MAX_IMAGES_PER_REQUEST // MAX_SAMPLES_PER_ROW
    )
    status, body = _post(port, {"inputs": at_cap})
    assert status == 200 and np.asarray(body["predictions"]).shape == (4, MAX_SAMPLES_PER_ROW, 28, 28)
    assert _memory(process) - before < 1024 * 2**20  # the largest answer fits well within 1 GiB


def _raw_post(port: int, body: bytes, headers: dict[str, str], chunked: bool = False) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
    try:
        if chunked:  # no Content-Length: the server learns the size only as it reads
            connection.request("POST", "/invocations", body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]), headers=headers, encode_chunked=True)  # fmt: skip
        else:
            connection.request("POST", "/invocations", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


JSON = {"Content-Type": "application/json"}
ONE_ROW = json.dumps({"inputs": [{"digit": 6, "n_samples": 1, "seed": 0}]}).encode()


@pytest.mark.parametrize(
    ("body", "headers", "chunked", "status", "message"),
    [
        (
            ONE_ROW,
            {},
            False,
            415,
            "Send JSON with the header Content-Type: application/json (this request: none)",
        ),
        (ONE_ROW, {"Content-Type": "text/plain"}, False, 415, "(this request: text/plain)"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, False, 400, "nested too deeply"),
        (b'{"inputs": [', JSON, False, 400, "The body is not valid JSON (Expecting value"),
        (b" " * 30_000_000, JSON, False, 413, "The body has 30000000 bytes; the most a request may send is"),
        (b" " * 30_000_000, JSON, True, 413, "The body is over 1048576 bytes"),
        (
            b'{"inputs": [{"digit": 12, "n_samples": 1}]}',
            JSON,
            False,
            400,
            "Row 0: digit = 12: Input should be",
        ),
    ],
    ids=["no type", "text", "deep", "broken", "30 MB", "30 MB chunked", "digit 12"],
)
def test_a_request_the_model_cannot_read_gets_one_line_at_once(
    server, body, headers, chunked, status, message
):
    port, _ = server
    answer_status, answer = _raw_post(port, body, headers, chunked)
    assert (answer_status, message in answer["message"]) == (status, True), answer
    assert "\n" not in answer["message"] and len(answer["message"]) < 200  # one line a person reads
    np.testing.assert_array_equal(_good_request(port).shape, (3, 28, 28))  # and it keeps serving


def test_a_body_over_the_limit_is_refused_on_its_declared_size_before_it_is_sent(server):
    port, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "30000000")
        connection.endheaders(b" " * 1024)  # the rest never comes: a server that read it all would wait
        response = connection.getresponse()
        assert response.status == 413 and b"The body has 30000000 bytes" in response.read()
    finally:
        connection.close()


def test_a_second_server_on_a_port_in_use_says_so_in_one_line(server, trained):
    port, _ = server
    project, environment, uri = trained
    second = subprocess.run(
        [BIN / "python", "-m", "cvae_mnist.glue.model_server", uri, "--port", str(port)],
        cwd=project, env=environment, capture_output=True, text=True, timeout=HANG, check=False,
    )  # fmt: skip
    assert second.returncode == 1 and second.stdout == "", second.stderr
    assert second.stderr.strip().splitlines() == [
        f"Error: port {port} on 127.0.0.1 is in use (another `make serve`?): stop it, "
        "or serve on another port with `make serve PORT=5003`."
    ]


class _SlowApp:
    """An ASGI app standing in for the scoring server: answers after ``seconds``, noting the
    deadline the guard gave the request's context."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.deadlines = seconds, []

    async def __call__(self, scope, receive, send) -> None:
        await receive()
        self.deadlines.append(DEADLINE.get())
        await asyncio.sleep(self.seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def _ask(guard: RequestGuard) -> int:
    scope = {"type": "http", "path": "/invocations", "headers": [(b"content-type", b"application/json")]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": ONE_ROW, "more_body": False}

    async def send(message):
        sent.append(message)

    await guard(scope, receive, send)
    return sent[0]["status"]


def test_requests_wait_their_turn_within_the_deadline_and_the_model_is_told_when_to_stop(monkeypatch):
    monkeypatch.setattr(model_server, "REQUEST_SECONDS", 4.0)
    monkeypatch.setattr(model_server, "MARGIN_SECONDS", 1.0)
    app = _SlowApp(seconds=2.0)
    guard = RequestGuard(app, at_once=1)

    async def three_at_once() -> list[int]:
        return await asyncio.gather(*(_ask(guard) for _ in range(3)))

    started = time.monotonic()
    statuses = asyncio.run(three_at_once())
    # one at a time: the first two finish within their 3 s, the third would start too late
    assert sorted(statuses) == [200, 200, 503]
    assert len(app.deadlines) == 2 and all(d <= started + 3.0 + 0.5 for d in app.deadlines)


def test_the_model_stops_drawing_at_its_deadline(trained):
    _, environment, uri = trained
    previous = mlflow.get_tracking_uri()  # whatever another test left: this one reads the project's store
    mlflow.set_tracking_uri(environment["MLFLOW_TRACKING_URI"])
    token = DEADLINE.set(time.monotonic() - 1)  # a request whose time is up
    try:
        model = mlflow.pyfunc.load_model(uri)
        with pytest.raises(MlflowException, match=r"took longer than 30 s and was stopped"):
            model.predict([{"digit": 1, "n_samples": 2, "seed": 0}])
        DEADLINE.set(None)
        assert len(model.predict([{"digit": 1, "n_samples": 2, "seed": 0}])[0]) == 2  # in time: drawn
    finally:
        DEADLINE.reset(token)
        mlflow.set_tracking_uri(previous)


def test_the_readme_request_saves_a_picture_of_the_digits(server, tmp_path):
    """The README's commands, as written (the port and the Python aside), against the server."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in readme.split("```bash\n")[1:] if "sixes.json" in b.split("```")[0]).split("```")[
        0
    ]
    commands = [line for line in block.splitlines() if not line.startswith("make serve")]
    script = "\n".join(commands).replace("5001", str(server[0])).replace(".venv/bin/python", sys.executable)
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, check=True, timeout=HANG)
    picture = plt.imread(tmp_path / "sixes.png")
    assert picture.shape[:2] == (28, 3 * 28)  # three 28x28 digits side by side


def test_a_failure_while_drawing_is_a_500_that_names_no_internals(trained, monkeypatch):
    _, environment, uri = trained
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(environment["MLFLOW_TRACKING_URI"])
    try:
        model = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(previous)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access at 0x7f3e")  # what a user must not see

    monkeypatch.setattr(serving, "generate", broken)
    with pytest.raises(MlflowException) as failed:
        model.predict([{"digit": 1, "n_samples": 2, "seed": 0}])
    assert failed.value.error_code == "INTERNAL_ERROR"
    assert failed.value.message == "Generation failed on the server; see its log."
