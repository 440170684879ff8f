"""The project's catalog and parameters for the benchmark scripts (run from the project root),
and the checks of their numeric options."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from cvae_mnist.params import ProjectParameters
from cvae_mnist.settings import CONFIG_LOADER_ARGS


@contextmanager
def project_catalog(env: str | None, required: tuple[str, ...] = ()) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(catalog, params)`` of the Kedro project in the current folder.

    Exits with one message, before anything runs, if a ``required`` dataset does not exist yet.
    """
    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        missing = [name for name in required if not context.catalog.exists(name)]
        if missing:
            where = f" --env {env}" if env else ""
            raise SystemExit(
                f"Error: {', '.join(missing)} not found for environment {env or 'local'}: "
                f"run `kedro run{where}` first (see the README)."
            )
        yield context.catalog, context.params


def environment_parameters(env: str) -> ProjectParameters:
    """The validated parameters of ``conf/<env>`` over ``conf/base`` (without ``conf/local``)."""
    args = {key: value for key, value in CONFIG_LOADER_ARGS.items() if key != "default_run_env"}
    loader = OmegaConfigLoader(str(Path.cwd() / "conf"), env=env, **args)
    return ProjectParameters.model_validate(loader["parameters"])


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark script's parser: its docstring as help, and ``--env``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="Kedro environment (default: local)")
    return parser


def number(kind: type, minimum: float, what: str) -> Callable[[str], float]:
    """An argparse ``type``: a ``kind`` (int or float) of at least ``minimum``, else a one-line usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value

    return parse


positive_int = number(int, 1, "a whole number of at least 1")
non_negative_int = number(int, 0, "a whole number of at least 0")
positive_seconds = number(float, 1, "at least 1 (seconds)")
