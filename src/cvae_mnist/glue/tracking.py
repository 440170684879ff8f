"""MLflow tracking of the project's runs: kedro-mlflow's hook with typed parameters, readable
run names and tags, failed and killed runs marked, live epoch metrics and the registered model."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow.entities import RunStatus
from mlflow.utils.git_utils import get_git_commit
from pydantic import BaseModel, ValidationError

from cvae_mnist.engine import distributed, trainer
from cvae_mnist.errors import ConfigurationError, RunInterrupted, find_user_error, redacted
from cvae_mnist.glue import lineage
from cvae_mnist.glue.hooks import NodeTimingHook, local_file
from cvae_mnist.glue.mlflow_store import check_server, check_store_location, with_the_projects_store
from cvae_mnist.glue.serving import CHAMPION, MODEL_NAME

logger = logging.getLogger(__name__)

# environments that change only where runs are recorded, not the model: their full runs
# register the champion
DEFAULT_ENVS = (None, "local", "base", "server")
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _problems(error: ValidationError) -> str:
    """Each key Pydantic refused, and why, from its structured errors."""
    return "; ".join(
        f"{'.'.join(map(str, item['loc']))}: {'unknown key' if item['type'] == 'extra_forbidden' else item['msg']}"
        for item in error.errors()
    )


class MlflowTrackingHook(MlflowHook):
    def __init__(self, timings: NodeTimingHook) -> None:
        super().__init__()
        self._timings = timings
        self._handlers: dict[int, Any] = {}
        self._live = _EpochValues()

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        project = Path(context.project_path)
        if mlflow.active_run() is None:  # kedro-mlflow would retry an unreachable server for minutes
            patterns = context.config_loader.config_patterns  # kedro-mlflow's own, set before it reads it
            patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
            try:
                raw = context.config_loader["mlflow"]
            except MissingConfigException:
                raw = {}
            # set on the loader (Kedro's documented override), so that kedro-mlflow reads it so
            context.config_loader["mlflow"] = raw = with_the_projects_store(raw, project)
            try:
                settings = KedroMlflowConfig.model_validate(raw).model_dump()
            except ValidationError as error:  # kedro-mlflow's own model of mlflow.yml
                raise ConfigurationError(
                    f"conf/{context.env or 'local'}/mlflow.yml (or conf/base/mlflow.yml) is not a "
                    f"valid kedro-mlflow configuration: {_problems(error)}."
                ) from None
            mlflow.set_tracking_uri(settings["server"]["mlflow_tracking_uri"])  # named in any error
            try:
                secrets = context.config_loader["credentials"].get(
                    settings["server"]["credentials"] or "", {}
                )
            except MissingConfigException:  # no credentials.yml
                secrets = {}
            check_server(
                settings["server"]["mlflow_tracking_uri"], settings["tracking"]["experiment"]["name"], secrets
            )
        super().after_context_created(context=context)
        if self._is_mlflow_enabled and not self._already_active_mlflow:
            check_store_location(
                self.mlflow_config.server.mlflow_tracking_uri,
                self.mlflow_config.tracking.experiment.name,
                project,
            )

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        names = run_params.get("pipeline_names") or ["__default__"]
        env = run_params.get("env") or "local"
        if self.mlflow_config.tracking.run.name is None:
            shown = "+".join("default" if name == "__default__" else name for name in names)
            self.mlflow_config.tracking.run.name = f"{env} {shown} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        runner = re.sub(r"^<(?:[\w.]+\.)?(\w+) object at 0x\w+>$", r"\1", str(run_params.get("runner")))
        tags = {**run_params, "project_path": None, "runner": runner, "env": env}
        if distributed.current().size > 1:  # torchrun: the global batch is this many times batch_size
            tags["processes"] = distributed.current().size
        super().before_pipeline_run(run_params=tags, pipeline=pipeline, catalog=catalog)
        self._catalog, self._project = catalog, Path(run_params["project_path"])
        # only a full default run registers its model: default pipeline and environment, no --params
        self._default_run = (
            names == ["__default__"]
            and run_params.get("env") in DEFAULT_ENVS
            and not run_params.get("runtime_params")
        )
        if self.run_id is not None:
            commit = _git_commit(self._project)
            # MLflow's source is sys.argv[0], often an absolute path: the program's name says enough
            mlflow.set_tags(
                {"mlflow.source.name": Path(sys.argv[0]).name}
                | ({"mlflow.source.git.commit": commit} if commit else {})
            )
            # MLflow 3's UI opens an experiment of no kind on its GenAI overview (traces); this
            # tag, the one its own kind selector sets, makes it open on the training runs
            mlflow.MlflowClient().set_experiment_tag(
                mlflow.active_run().info.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING
            )
        for number in (signal.SIGINT, signal.SIGTERM):
            self._handlers[number] = signal.signal(number, _raise_interrupted)
        if self.run_id is not None:  # each epoch's values in the run as the epoch ends, to watch it live
            logging.getLogger(trainer.__name__).addHandler(self._live)

    @hook_impl
    def before_node_run(self, node: Node, catalog: Any, inputs: dict[str, Any], is_async: bool) -> None:
        plain = {key: v.model_dump() if isinstance(v, BaseModel) else v for key, v in inputs.items()}
        super().before_node_run(node=node, catalog=catalog, inputs=plain, is_async=is_async)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        logging.getLogger(trainer.__name__).removeHandler(self._live)
        self._restore_signals()
        if self.run_id is not None and mlflow.active_run() is not None:
            mlflow.log_dict(
                {"seconds": self._timings.seconds, "total": self._timings.total}, "node_seconds.json"
            )
            mlflow.log_metric("seconds_total", self._timings.total)
            self._link_model(pipeline)
        super().after_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)

    @hook_impl(tryfirst=True)  # the run's status first: a signal during another hook must not skip it
    def on_pipeline_error(
        self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any
    ) -> None:
        logging.getLogger(trainer.__name__).removeHandler(self._live)
        with (
            self._signals_deferred()
        ):  # a SIGTERM now (torchrun stopping this rank) waits for the run's status
            run_id = self.run_id if self._is_mlflow_enabled else None
            super().on_pipeline_error(error=error, run_params=run_params, pipeline=pipeline, catalog=catalog)
            if run_id is None:
                return
            client = mlflow.MlflowClient()
            reason = find_user_error(error) or error
            message = redacted(f"{type(reason).__name__}: {reason}").replace(f"{self._project}{os.sep}", "")
            client.set_tag(run_id, "error", message[:5000])  # paths relative to the project, as in the docs
            if isinstance(reason, RunInterrupted):
                client.set_tag(run_id, "interrupted", reason.signal_name)
                client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))

    @contextmanager
    def _signals_deferred(self) -> Iterator[None]:
        """SIGINT and SIGTERM held while the MLflow run is being closed, then the user's
        handlers back and a held signal delivered: the run's status is written either way."""
        held: list[int] = []
        for number in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(number, lambda n, frame: held.append(n))
            self._handlers.setdefault(number, previous)
        try:
            yield
        finally:
            self._restore_signals()
            if held:
                signal.raise_signal(held[0])

    def _restore_signals(self) -> None:
        for number, handler in self._handlers.items():
            signal.signal(number, handler)
        self._handlers.clear()

    def _link_model(self, pipeline: Pipeline) -> None:
        """Tag the run with the logged model it scored, log the test metrics on that model,
        and after a full default run register it as the champion."""
        model_run = self.run_id
        if "cvae_model" in pipeline.inputs():  # scored a model that an earlier run trained
            path = local_file(self._catalog.get("cvae_model"))
            record = lineage.read_record(path) if path is not None else None
            model_run = record.get("mlflow_run_id") if record else None
        models = mlflow.search_logged_models(
            filter_string=f"source_run_id = '{model_run}' AND name = '{MODEL_NAME}'", output_format="list"
        ) if model_run else []  # fmt: skip
        if not models:
            return
        model = models[0]
        mlflow.set_tags({"scored_model": f"models:/{model.model_id}", "scored_model_run": model_run})
        metrics = {k: v for k, v in mlflow.get_run(self.run_id).data.metrics.items() if k.startswith("test.")}
        if metrics:
            mlflow.log_metrics(metrics, model_id=model.model_id)
        if self._default_run and metrics and model_run == self.run_id and _full_data(self._catalog):
            version = mlflow.register_model(f"models:/{model.model_id}", MODEL_NAME)
            mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
            logger.info("Registered %s version %s as @%s", MODEL_NAME, version.version, CHAMPION)


class _EpochValues(logging.Handler):
    """Logs the values an epoch record of the training engine carries to the active MLflow
    run, as ``<series>.<name>`` at step ``epoch``."""

    def emit(self, record: logging.LogRecord) -> None:
        values = getattr(record, "epoch_values", None)
        if values and mlflow.active_run() is not None:
            mlflow.log_metrics(
                {f"{record.series}.{key}": float(v) for key, v in values.items()}, step=record.step
            )


def _raise_interrupted(number: int, frame: Any) -> None:
    raise RunInterrupted(number, signal.Signals(number).name)


def _full_data(catalog: Any) -> bool:
    ingestion = catalog["parameters"].load()["data_ingestion"]
    return ingestion.n_train is None and ingestion.n_test is None


def _git_commit(project: Path) -> str | None:
    """The project's commit. MLflow tags one itself only when ``sys.argv[0]`` lies in the
    repository: under ``kedro run`` that is the ``kedro`` script of the virtual environment,
    which is often elsewhere (conda, pipx), and under ``python -m kedro`` it is in
    site-packages. The same MLflow helper, asked about the project instead."""
    return get_git_commit(str(project))
