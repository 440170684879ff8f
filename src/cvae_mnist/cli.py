"""Project commands: Kedro's own ``kedro run``, but a user's mistake (a bad parameter,
a damaged file, no reachable data source) is printed as one clear message with exit
code 1 instead of a traceback. Bugs keep their traceback."""

from __future__ import annotations

import copy
import functools
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import mlflow
import rich.logging
import sqlalchemy.exc
import yaml
from kedro.config import BadConfigException, MissingConfigException
from kedro.framework.cli.project import run as kedro_run
from kedro.io import DatasetError
from kedro.validation import ParameterValidationError
from mlflow.entities import RunStatus

import cvae_mnist.pipelines
from cvae_mnist.engine import distributed, worker
from cvae_mnist.errors import (
    ConfigurationError,
    CvaeMnistError,
    ParameterError,
    RunInterrupted,
    find_user_error,
    redacted,
)


def user_error(error: BaseException) -> CvaeMnistError | None:
    """The user's mistake behind ``error``, or None: ours, Kedro's parameter validation, and
    configuration files Kedro cannot read (bad YAML, a catalog entry it cannot build)."""
    cause: BaseException | None = error
    seen = set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ParameterValidationError):  # ParametersHook names the key first; this
            return ParameterError(" ".join(str(cause).split()))  # is a hint no model of ours covers
        unreadable = isinstance(cause, yaml.YAMLError | BadConfigException | MissingConfigException)
        if unreadable or _catalog_mistake(cause):
            return ConfigurationError(" ".join(str(cause).split()))
        if isinstance(cause, sqlalchemy.exc.DatabaseError):  # MLflow's SQL store: damaged, read-only, locked
            return ConfigurationError(
                f"The MLflow store {redacted(mlflow.get_tracking_uri())} cannot be used ({cause.orig}): "
                "make it a database this user can write, or set another mlflow_tracking_uri in "
                "conf/<env>/mlflow.yml."
            )
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return find_user_error(error)


def _catalog_mistake(error: BaseException) -> bool:
    """A catalog entry Kedro cannot build: a ``DatasetError`` caused by nothing but other
    ``DatasetError``s (an unknown type, a missing ``type``, arguments a dataset refuses). One
    that wraps another exception is a dataset failing at its work, which keeps its traceback."""
    while isinstance(error, DatasetError):
        error = error.__cause__
    return error is None


def _check_names(options: dict[str, Any]) -> None:
    """Refuse an environment or a pipeline that does not exist, before anything starts."""
    conf = Path(options.get("conf_source") or Path.cwd() / "conf")
    env = options.get("env") or os.environ.get("KEDRO_ENV")
    if env and conf.is_dir() and not (conf / env).is_dir():
        known = sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name != "base")
        raise click.ClickException(
            f"There is no environment {env!r} ({conf / env} does not exist); the environments are: {', '.join(known)}."
        )
    known = cvae_mnist.pipelines.names()
    asked = [options.get("pipeline"), *(options.get("pipelines") or [])]
    unknown = [name for name in asked if name and name != "__default__" and name not in known]
    if unknown:
        raise click.ClickException(
            f"There is no pipeline {unknown[0]!r}; the pipelines are: {', '.join(known)}."
        )


def _wide_logs_when_piped(columns: int = 200) -> None:
    """Log lines written to a file or a pipe (CI, ``| tee``) as wide as ``columns``: rich's
    console, which Kedro's log handler writes through, cuts them at 80 there, splitting node
    names and paths. A terminal keeps its own width."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, rich.logging.RichHandler) and not handler.console.is_terminal:
            handler.console.width = columns


def _report_user_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        world = distributed.from_environment()
        if world.size == 1:
            return run_checked(*args, **kwargs)
        # under torchrun: rank 0 runs the pipeline, the others train with it (cvae_mnist.engine.distributed)
        distributed.start(world)
        if not world.main:
            code = worker.serve(world)
            distributed.stop()
            raise SystemExit(code)
        # On failure rank 0 exits without waiting for the others, which may be inside a
        # collective of the training: torchrun stops them when a process exits with an error.
        result = run_checked(*args, **kwargs)
        distributed.send("stop")
        distributed.stop()
        return result

    def run_checked(*args: Any, **kwargs: Any) -> Any:
        _check_names(kwargs)
        _wide_logs_when_piped()
        try:
            with warnings.catch_warnings():  # `kedro run --pipeline X` is this project's documented form
                warnings.filterwarnings("ignore", message="Option '--pipeline' is deprecated")
                return callback(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C outside the run's own handlers: at start-up, or at its end
            if mlflow.active_run() is not None:  # a run that would otherwise stay RUNNING for ever
                mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            interrupted = RunInterrupted(signal.SIGINT, "SIGINT")
            click.echo(f"Error: {interrupted}", err=True)
            raise SystemExit(interrupted.exit_code) from None
        except Exception as error:
            mistake = user_error(error)
            if mlflow.active_run() is not None:  # a run the hooks could not close: MLflow would end it
                killed = isinstance(mistake, RunInterrupted)  # FINISHED when this process exits
                mlflow.end_run(RunStatus.to_string(RunStatus.KILLED if killed else RunStatus.FAILED))
            if mistake is None:
                raise
            if isinstance(mistake, RunInterrupted):
                click.echo(f"Error: {mistake}", err=True)
                raise SystemExit(mistake.exit_code) from None
            raise click.ClickException(str(mistake)) from None

    return wrapper


@click.group(name="cvae-mnist")
def cli() -> None:
    """Commands of the cvae-mnist project."""


def _one_line_option_errors(option: click.Parameter) -> click.Parameter:
    """A copy of one of ``kedro run``'s options whose value Kedro parses (``--params`` with
    OmegaConf's grammar), which names a value it cannot parse in one line."""
    option, parse = copy.copy(option), option.callback
    if parse is not None:

        def checked(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
            try:
                return parse(ctx, param, value)
            except click.ClickException:
                raise
            except Exception as error:  # noqa: BLE001 - the parser's grammar errors, whatever their class
                raise click.ClickException(
                    f"--{param.name} {value!r} cannot be read ({' '.join(str(error).split())}); write "
                    "key=value pairs separated by commas, e.g. --params training.epochs=2,seed=3."
                ) from None

        option.callback = checked
    return option


run = copy.copy(kedro_run)
run.callback = _report_user_errors(kedro_run.callback)
run.params = [_one_line_option_errors(option) for option in kedro_run.params]
cli.add_command(run, "run")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--env", "-e", default=None, help="Kedro configuration environment.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def ipython(env: str | None, args: tuple[str, ...]) -> None:
    """Open IPython with the project's catalog, context, pipelines and session loaded.

    Kedro's own command starts whichever `ipython` is first on PATH; this one starts the
    IPython of the Python that runs kedro (the project's virtual environment), so
    `.venv/bin/kedro ipython` works without activating it.
    """
    if env:
        os.environ["KEDRO_ENV"] = env
    os.execv(sys.executable, [sys.executable, "-m", "IPython", "--ext", "kedro.ipython", *args])
