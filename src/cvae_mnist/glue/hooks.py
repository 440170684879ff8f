"""Project hooks: checks before a run (parameters, devices, other runs, stale inputs), the
record of what made each file, and the wall time of each node. MLflow tracking is in
``cvae_mnist.glue.tracking``."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from filelock import FileLock, Timeout
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from pydantic import ValidationError

import cvae_mnist.pipelines
from cvae_mnist.datasets import CheckpointDataset
from cvae_mnist.errors import ModelFileError, ParameterError, RunConflictError, describe_validation_error
from cvae_mnist.glue import lineage
from cvae_mnist.glue.saving import write_error
from cvae_mnist.params import ProjectParameters

logger = logging.getLogger(__name__)


def lock_paths(folder: Path) -> tuple[Path, Path]:
    """The run lock of a data folder and the file naming its holder. They live in this user's
    temporary folder, out of sight: a lock file lying in the data folder would invite its
    deletion, which would let a second run in."""
    home = Path(tempfile.gettempdir()) / f"cvae-mnist-locks-{os.getuid() if hasattr(os, 'getuid') else 0}"
    home.mkdir(mode=0o700, exist_ok=True)
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]
    return home / f"{key}.lock", home / f"{key}.holder"


def local_file(dataset: Any, *, handles: bool = False) -> Path | None:
    """The file a dataset of this project reads and writes (its public ``filepath``), or None
    (memory, MLflow, folders; a checkpoint handle, which its node reads and writes itself,
    unless ``handles``)."""
    if isinstance(dataset, CheckpointDataset) and not handles:
        return None
    filepath = getattr(dataset, "filepath", None)
    return Path(filepath) if filepath else None


def _check_sections_are_mappings(context: Any) -> None:
    """Refuse a section that is empty or a number in any parameters file. Kedro merges the
    files of one environment in no fixed order and sees no clash between ``training:`` in one
    file and ``training: {epochs: 2}`` in another, so such a section would otherwise be
    dropped or kept by chance."""
    loader = context.config_loader
    conf = Path(loader.conf_source)
    for env in {loader.base_env, context.env or loader.default_run_env} - {None}:
        folder = conf / env
        files = {path for pattern in loader.config_patterns["parameters"] for path in folder.glob(pattern)}
        for path in sorted(p for p in files if p.suffix in {".yml", ".yaml", ".json"}):
            try:
                sections = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                continue  # Kedro's own loader names the line
            if not isinstance(sections, dict):
                raise ParameterError(
                    f"{path.relative_to(conf.parent)} holds a {type(sections).__name__}: a parameters file must be a mapping "
                    "of names to values, such as `training: {epochs: 2}`."
                )
            for name, value in sections.items():
                if name in ProjectParameters.model_fields and name != "seed" and not isinstance(value, dict):
                    state = "is empty" if value is None else f"= {value!r} is invalid"
                    raise ParameterError(
                        f"Parameter {name} {state}: it must be a mapping of keys to values ({path})."
                    )


class ParametersHook:
    """Refuse a bad parameter, an unknown key and an unavailable device before anything runs.

    The merged parameters (files and ``--params``) are validated here with the same models
    Kedro validates each section with where a node reads it, before Kedro does: Pydantic's
    structured errors name each key, its value and the rule in one line.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        _check_sections_are_mappings(context)
        try:
            parameters = ProjectParameters.model_validate(context.config_loader["parameters"])
        except ValidationError as error:
            raise ParameterError(describe_validation_error(error)) from None
        available = {
            "cpu",
            "auto",
            *(["cuda"] * torch.cuda.is_available()),
            *(["mps"] * torch.backends.mps.is_available()),
        }
        for section in ("training", "evaluation", "generation"):
            device = getattr(parameters, section).device
            if device not in available:
                raise ParameterError(
                    f"Parameter {section}.device = {device!r}, but no {device.upper()} device is available "
                    "here; use auto (the best one found) or cpu."
                )


class RunLockHook:
    """One run at a time reads or writes a folder: a second run that would use a folder
    another run is using stops at once with a message naming it (``filelock``: an OS lock on Linux,
    macOS and Windows alike, which the OS releases when the process ends, however it ends).
    The holder is named in a file beside the lock while it holds it (:func:`lock_paths`)."""

    def __init__(self) -> None:
        self._held: list[tuple[FileLock, Path]] = []

    def release(self) -> None:
        for lock, holder in self._held:
            holder.unlink(missing_ok=True)  # no holder named any more
            lock.release()
        self._held.clear()

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        self.release()
        # the folders it writes, and those it reads (another run must not rewrite an input
        # midway); the raw MNIST files, which no run rewrites, have no ``filepath``
        paths = (local_file(catalog.get(name), handles=True) for name in pipeline.datasets())
        folders = sorted({path.parent for path in paths if path is not None})
        for folder in folders:
            try:  # a folder the run cannot write into stops it here, before any work
                folder.mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=folder).close()
                lock_file, holder = lock_paths(folder)
                lock = FileLock(lock_file, timeout=0)
                lock.acquire()
            except Timeout:
                try:
                    named = holder.read_text().strip()
                except OSError:
                    named = ""
                self.release()
                raise RunConflictError(
                    f"Another kedro run ({named or 'another process'}) is using {folder}: wait for "
                    "it to finish, or run in an environment whose folders are its own (see conf/*/globals.yml)."
                ) from None
            except OSError as error:
                self.release()
                raise write_error(folder, error) from None
            self._held.append((lock, holder))
            holder.write_text(
                f"pid {os.getpid()}, --env {run_params.get('env') or 'local'}, since {time.strftime('%H:%M:%S')}"
            )

    @hook_impl
    def after_pipeline_run(self) -> None:
        self.release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self.release()


class LineageHook:
    """Stop a run that would use a stale input; record what made each file the run writes
    (``cvae_mnist.glue.lineage``)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, dict[str, Any]] = {}

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        self._catalog, self._records, self._pending = catalog, {}, {}
        self._root = Path(run_params["project_path"])
        parameters: dict[str, Any] = {}
        for name, value in catalog["parameters"].load().items():
            parameters.update(lineage.parameters_of(name, value))
        found, unknown, missing = {}, [], []
        for name in sorted(pipeline.inputs()):
            path = local_file(catalog.get(name))
            record = lineage.read_record(path) if path is not None else None
            if record is not None:
                self._records[name] = record
                found[name] = lineage.relative(path, self._root)
            elif path is not None and _pipeline_writing(name) is not None:
                (unknown if path.exists() else missing).append((name, lineage.relative(path, self._root)))
        env = run_params.get("env")

        def rebuild(name: str) -> str:
            return f"kedro run --pipeline {_pipeline_writing(name)}" + (f" --env {env}" if env else "")

        if missing:  # named with the environment, which the catalog's own hint cannot know
            name, shown = missing[0]
            raise ModelFileError(f"{shown} does not exist. Run `{rebuild(name)}` first.")
        if unknown:
            name, shown = unknown[0]
            why = (
                f"its bytes are not those that {shown}{lineage.SUFFIX} records: it was damaged or "
                "replaced since the run that made it"
                if lineage.record_path(self._root / shown).exists()
                else f"there is no {shown}{lineage.SUFFIX}: it was made elsewhere, and could be any model or data"
            )
            raise RunConflictError(
                f"{shown} is not the file a run of this project made ({why}). Rebuild it with `{rebuild(name)}`."
            )
        # a file made under other settings first: what made it stale is closest to the cause
        reasons = [lineage.changed_setting(found[n], self._records[n], parameters) for n in found]
        reasons += [lineage.changed_source(found[n], self._records[n], self._root) for n in found]
        stale = next(((name, reason) for name, reason in zip([*found, *found], reasons) if reason), None)
        if stale:
            raise RunConflictError(
                f"{stale[1]}: rebuild it with `{rebuild(stale[0])}`, or run with the parameters it was made with."
            )

    @hook_impl
    def before_node_run(self, node: Node, inputs: dict[str, Any]) -> None:
        parameters: dict[str, Any] = {}
        sources: dict[str, Any] = {}
        for name in node.inputs:
            if name.startswith("params:"):
                parameters.update(lineage.parameters_of(name.removeprefix("params:"), inputs[name]))
                continue
            made = self._records.get(name, {})
            parameters.update(made.get("parameters", {}))
            sources.update(made.get("inputs", {}))
            path = local_file(self._catalog.get(name))
            if path is not None and path.exists():
                sources[lineage.relative(path, self._root)] = lineage.signature(path, made.get("file"))
        self._pending[node.name] = {"node": node.name, "parameters": parameters, "inputs": sources}

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        run = mlflow.active_run()  # None when tracking is off
        record = {**self._pending[node.name], "mlflow_run_id": run.info.run_id if run else None}
        self._records[dataset_name] = record
        path = local_file(self._catalog.get(dataset_name))
        if path is not None and path.exists():
            lineage.write_record(path, record)
            self._records[dataset_name] = lineage.read_record(path) or record


def _pipeline_writing(dataset: str) -> str | None:
    """The name of the project's pipeline that writes ``dataset``."""
    for name in cvae_mnist.pipelines.names():
        module = importlib.import_module(f"cvae_mnist.pipelines.{name}")
        if dataset in module.create_pipeline().all_outputs():
            return name
    return None  # an input no pipeline writes (the raw MNIST files)


class NodeTimingHook:
    """Log each node's wall time and, at the end, every node's share of the run."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.total = 0.0

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
        self.total = time.perf_counter() - self._run_started
        logger.info("Wall time of the pipeline run: %.2f s; by node:", self.total)
        for name, seconds in sorted(self.seconds.items(), key=lambda item: -item[1]):
            logger.info("%8.2f s %6.1f%%  %s", seconds, 100 * seconds / self.total, name)
