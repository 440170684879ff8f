"""Errors that report a user's mistake, which the project's ``kedro run`` prints as one line
instead of a traceback (``cvae_mnist.cli``); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from cvae_mnist import params


class CvaeMnistError(Exception):
    """Base class for errors a user can fix by changing their input or config."""


class ParameterError(CvaeMnistError, ValueError):
    """A parameter in ``conf/*/parameters*.yml`` or ``--params`` is invalid."""


class ConfigurationError(CvaeMnistError, ValueError):
    """A configuration file under ``conf/`` cannot be read or used."""


class DataError(CvaeMnistError, ValueError):
    """A data file is missing, damaged or cannot be obtained."""


class ModelFileError(CvaeMnistError, ValueError):
    """A saved model or checkpoint cannot be used."""


class TrainingDivergedError(CvaeMnistError, RuntimeError):
    """Training produced a non-finite loss."""


class RunConflictError(CvaeMnistError, RuntimeError):
    """Another run is writing into the same folders, or an input is stale."""


class DistributedError(CvaeMnistError, RuntimeError):
    """A process of the torchrun job stopped or cannot be reached."""


class RunInterrupted(CvaeMnistError):
    """The run was stopped by a signal (Ctrl-C is SIGINT); the shell's exit code is 128 + its number."""

    def __init__(self, signal_number: int, signal_name: str) -> None:
        under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1 and signal_name == "SIGTERM"
        cause = (
            " torchrun stops every process when one fails: its summary names it." if under_torchrun else ""
        )
        super().__init__(
            f"Interrupted by {signal_name}.{cause} What was complete is kept (for training, the checkpoint "
            "of the last finished epoch: `kedro run --params training.resume=true` continues from it)."
        )
        self.exit_code = 128 + signal_number
        self.signal_name = signal_name


def redacted(text: str) -> str:
    """``text`` with the user name and password of every URL in it replaced by ``***``."""
    return re.sub(r"(\w[\w+.-]*://)[^/@\s]*@", r"\1***@", text)


def find_user_error(error: BaseException | None) -> CvaeMnistError | None:
    """The first user error in an exception's chain of causes, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CvaeMnistError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def describe_problem(key: str, kind: str, message: str, value: str, model: type[BaseModel] | None) -> str:
    if kind == "extra_forbidden":
        known = ", ".join(model.model_fields) if model else ""
        return f"Unknown parameter {key}" + (f" (allowed there: {known})" if known else "")
    return f"Parameter {key} = {value} is invalid: {message[0].lower()}{message[1:]}"


def describe_validation_error(error: ValidationError, section: str = "") -> str:
    """One line naming every key that failed Pydantic's validation, its value and the rule."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in (section, *item["loc"]) if part != "")
        owner = section_model(key.split(".")[0]) if "." in key else params.ProjectParameters
        if item["input"] is None and section_model(key) is not None:  # a section with nothing in it
            problems.append(f"Parameter {key} is empty: it must be a mapping of keys to values")
            continue
        problems.append(describe_problem(key, item["type"], item["msg"], repr(item["input"]), owner))
    return join_problems(problems)


def section_model(section: str) -> type[BaseModel] | None:
    field = params.ProjectParameters.model_fields.get(section)
    annotation: Any = field.annotation if field else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def join_problems(problems: Iterable[str]) -> str:
    return "; ".join(problems) + "."
