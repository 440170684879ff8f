"""The few lines a person reads at the end of a successful run: the metrics, the files written
and the MLflow run with the address that opens it."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import click
import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.pipeline.node import Node

from cvae_mnist.errors import redacted
from cvae_mnist.glue.hooks import local_file

UI = "http://127.0.0.1:5000"  # `make mlflow-ui`


class RunSummaryHook:
    """Print the run's summary after Kedro's own last line (``Pipeline execution completed``)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], catalog: Any) -> None:
        self._root, self._catalog = Path(run_params["project_path"]), catalog
        self._files: list[str] = []
        self._metrics: pd.DataFrame | None = None
        self._run: Any = None

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        path = local_file(self._catalog.get(dataset_name))
        if path is not None:
            self._files.append(_shown(path, self._root))
        if dataset_name == "metrics" and isinstance(data, pd.DataFrame):
            self._metrics = data
        self._run = mlflow.active_run() or self._run  # kedro-mlflow ends it before the last hooks

    @hook_impl
    def after_pipeline_run(self) -> None:
        lines = []
        if self._metrics is not None and len(self._metrics) == 1:
            lines.append("Metrics on the test set:")
            lines += [f"  {name:<22} {value:g}" for name, value in self._metrics.iloc[0].items()]
        if self._files:
            lines.append(f"Files written ({len(self._files)}):")
            lines += [f"  {name}" for name in self._files]
        if self._run is not None:
            lines.append(f"MLflow run {self._run.info.run_name!r}: {_address(self._run)}")
        if lines:
            click.echo("\n".join(["", *lines]))


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _address(run: Any) -> str:
    """Where the run's page is: on the server it was logged to, or in `make mlflow-ui`."""
    tracking = redacted(mlflow.get_tracking_uri())
    host = tracking.rstrip("/") if urllib.parse.urlparse(tracking).scheme in {"http", "https"} else None
    # MLflow 3.17's UI shows a run as GenAI unless asked for model training
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    return f"{host}/{page}" if host else f"`make mlflow-ui`, then {UI}/{page}"
