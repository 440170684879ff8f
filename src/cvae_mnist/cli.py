"""Project commands: Kedro's own ``kedro run``, but a user's mistake (a bad parameter,
a damaged file, no reachable data source) is printed as one clear message with exit
code 1 instead of a traceback. Bugs keep their traceback."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from cvae_mnist.errors import find_user_error


def _report_user_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None:
                raise
            raise click.ClickException(str(user_error)) from None

    return wrapper


@click.group(name="cvae-mnist")
def cli() -> None:
    """Commands of the cvae-mnist project."""


run = copy.copy(kedro_run)
run.callback = _report_user_errors(kedro_run.callback)
cli.add_command(run, "run")
