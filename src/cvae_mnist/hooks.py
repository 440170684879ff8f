"""Project hooks: the top level of the parameters checked before a run, MLflow tracking of
typed parameters and failures, and the wall time of each node."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.pipeline.node import Node
from kedro_mlflow.framework.hooks import MlflowHook
from pydantic import BaseModel, ValidationError

from cvae_mnist.errors import ParameterError, describe_validation_error, find_user_error
from cvae_mnist.params import ProjectParameters

logger = logging.getLogger(__name__)


class ParametersHook:
    """Refuse unknown top-level keys and a bad seed before anything else runs.

    Reading ``context.params`` makes Kedro validate every section against the type hints
    of the nodes that read it; what is left to check is what no node's hint covers.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        try:
            ProjectParameters.model_validate(context.params)
        except ValidationError as error:
            raise ParameterError(describe_validation_error(error)) from None


class MlflowTrackingHook(MlflowHook):
    """kedro-mlflow's hook (its plugin registration is disabled in ``settings.py``), which
    logs typed parameter sections field by field, flattened as ``training.lr``, and tags a
    failed run with its error."""

    @hook_impl
    def before_node_run(self, node: Node, catalog: Any, inputs: dict[str, Any], is_async: bool) -> None:
        plain = {key: v.model_dump() if isinstance(v, BaseModel) else v for key, v in inputs.items()}
        super().before_node_run(node=node, catalog=catalog, inputs=plain, is_async=is_async)

    @hook_impl
    def on_pipeline_error(
        self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any
    ) -> None:
        run_id = self.run_id if self._is_mlflow_enabled else None
        super().on_pipeline_error(error=error, run_params=run_params, pipeline=pipeline, catalog=catalog)
        if run_id is not None:  # ended as FAILED by now
            reason = find_user_error(error) or error
            mlflow.MlflowClient().set_tag(run_id, "error", f"{type(reason).__name__}: {reason}"[:5000])


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
