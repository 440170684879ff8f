"""The MLflow store and server a run will write to, settled before anything runs: a relative
SQLite store made the project's, a copied project's store refused, a tracking server that
cannot be reached or refuses the credentials named in one line. Through MLflow's client only."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.exceptions import MlflowException

from cvae_mnist.errors import ConfigurationError, redacted


def with_the_projects_store(settings: dict[str, Any], project: Path) -> dict[str, Any]:
    """``settings`` (of ``mlflow.yml``) with a relative SQLite store made the project's, wherever
    the process started: a notebook's kernel starts in ``notebooks/``, where
    ``sqlite:///mlflow.db`` would make a new, empty store. kedro-mlflow resolves a relative
    file store against the project, not a SQLite one; this does the same for it."""
    server = dict(settings.get("server") or {})
    for field in ("mlflow_tracking_uri", "mlflow_registry_uri"):
        uri = server.get(field) or ""
        database = uri.removeprefix("sqlite:///")
        if uri.startswith("sqlite:///") and not Path(database).is_absolute():
            server[field] = f"sqlite:///{(project / database).resolve()}"
    # a relative artifact location, resolved here as kedro-mlflow would, which would log that
    # "the tracking_uri is relative (... mlruns)": a SQLite store's user would look for a bug
    tracking = dict(settings.get("tracking") or {})
    experiment = dict(tracking.get("experiment") or {})
    created = dict(experiment.get("create_experiment_kwargs") or {})
    location = created.get("artifact_location")
    if location and "://" not in location and not Path(location).is_absolute():
        created["artifact_location"] = (project / location).resolve().as_uri()
        tracking = {**tracking, "experiment": {**experiment, "create_experiment_kwargs": created}}
    return {**settings, "server": server, "tracking": tracking}


def check_store_location(tracking_uri: str, experiment: str, project: Path) -> None:
    """Refuse to run where the project's own SQLite store keeps the experiment's artifacts in
    another folder's ``mlruns/``: a copied or moved project, whose runs MLflow would write
    into the original's folder (it records artifact locations as absolute paths). Read-only,
    through MLflow's client: the user's store is never rewritten."""
    if not (tracking_uri or "").startswith("sqlite:///"):
        return  # a server, or a store the user placed elsewhere on purpose
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database = database if database.is_absolute() else project / database
    if not database.exists() or project.resolve() not in database.resolve().parents:
        return
    found = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    location = urllib.parse.urlparse(found.artifact_location).path if found else ""
    ours = (project / "mlruns").resolve()
    if not location or Path(location).resolve() == ours or ours in Path(location).resolve().parents:
        return
    raise ConfigurationError(
        f"The MLflow experiment {experiment!r} in {database.name} keeps its artifacts in "
        f"{location}, not in this project's mlruns/ (the project was copied or moved): "
        "its runs would write there. Name a new experiment under tracking.experiment.name in "
        "conf/local/mlflow.yml (the old runs stay), or move mlflow.db and mlruns/ aside to start a "
        "new store. Nothing was run."
    )


def check_server(
    uri: str, experiment: str, credentials: dict[str, str] | None = None, timeout: float = 10.0
) -> None:
    """Stop the run before any work if the tracking server at ``uri`` (http or https) cannot be
    reached or refuses the ``credentials`` (the ``credentials.yml`` entry ``server.credentials``
    names): MLflow itself would retry for minutes, then fail in the middle of the run. The
    question is MLflow's client's own, with the credentials kedro-mlflow will export, one try
    and ``timeout``; the :class:`ConfigurationError` names the server without its credentials."""
    if not uri.startswith(("http://", "https://")):
        return
    shown = redacted(uri)
    asked = {
        **(credentials or {}),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(round(timeout)),
    }
    try:
        with _environment(asked):
            mlflow.MlflowClient(uri).get_experiment_by_name(experiment)  # None: the run creates it
    except MlflowException as error:
        if isinstance(error.__context__, requests.RequestException):  # no answer at all
            raise ConfigurationError(
                f"The MLflow tracking server {shown} cannot be reached ({type(error.__context__).__name__}). "
                "Start it (`make tracking-server` starts one on this machine), or point "
                "server.mlflow_tracking_uri in conf/<env>/mlflow.yml at one that runs. Nothing was run."
            ) from None
        status = error.get_http_status_code()
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            raise ConfigurationError(
                f"The MLflow tracking server {shown} refused the credentials (HTTP {status}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                "credentials.yml entry that conf/<env>/mlflow.yml names under server.credentials."
            ) from None
        raise ConfigurationError(
            f"The MLflow tracking server {shown} answered HTTP {status} ({error.error_code}): is it an "
            "MLflow tracking server?"
        ) from None


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored after."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
