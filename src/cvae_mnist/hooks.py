"""Project hooks: parameter validation before a run, and the wall time of each node."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.pipeline.node import Node

from cvae_mnist.config import validate_parameters
from cvae_mnist.errors import find_user_error

logger = logging.getLogger(__name__)


class ValidateParametersHook:
    """Reject bad parameters once, before any dataset is loaded or run is tracked."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        validate_parameters(context.params)


class MlflowErrorTagHook:
    """Record why a run failed: kedro-mlflow marks the MLflow run FAILED, this adds the
    error message as the run's ``error`` tag."""

    def __init__(self) -> None:
        self._run_id: str | None = None

    @hook_impl
    def before_pipeline_run(self) -> None:
        # Plugins' hooks run before the project's: kedro-mlflow has started the run here.
        run = mlflow.active_run()
        self._run_id = run.info.run_id if run is not None else None

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        if self._run_id is not None:  # kedro-mlflow has ended the run as FAILED by now
            user_error = find_user_error(error)
            message = f"{type(user_error or error).__name__}: {user_error or error}"
            mlflow.MlflowClient().set_tag(self._run_id, "error", message[:5000])


class NodeTimingHook:
    """Log each node's wall time, a summary at the end, and log it to the MLflow run."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._started.clear()
        self.seconds.clear()
        self._run_started = time.perf_counter()

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        self.seconds[node.name] = time.perf_counter() - self._started.pop(node.name)
        logger.info("%s took %.2f s", node.name, self.seconds[node.name])

    @hook_impl
    def after_pipeline_run(self) -> None:
        total = time.perf_counter() - self._run_started
        logger.info("Wall time of the pipeline run: %.2f s; by node:", total)
        for name, seconds in sorted(self.seconds.items(), key=lambda item: -item[1]):
            logger.info("%8.2f s %6.1f%%  %s", seconds, 100 * seconds / total, name)
        if mlflow.active_run() is not None:
            mlflow.log_metrics(
                {f"seconds.{name}": s for name, s in self.seconds.items()} | {"seconds.total": total}
            )
