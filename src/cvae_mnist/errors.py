"""Errors that report a user's mistake (bad input, bad file, bad parameter).

The project's ``kedro run`` prints these as one clear message instead of a
traceback (see ``cvae_mnist.cli``); anything else is a bug and keeps its traceback.
"""


class CvaeMnistError(Exception):
    """Base class for errors a user can fix by changing their input or config."""


class ParameterError(CvaeMnistError, ValueError):
    """A parameter in ``conf/*/parameters*.yml`` or ``--params`` is invalid."""


class DataError(CvaeMnistError, ValueError):
    """A data file is missing, damaged or cannot be obtained."""


class ModelFileError(CvaeMnistError, ValueError):
    """A saved model or checkpoint cannot be used."""


class TrainingDivergedError(CvaeMnistError, RuntimeError):
    """Training produced a non-finite loss."""


def find_user_error(error: BaseException | None) -> CvaeMnistError | None:
    """Return the first :class:`CvaeMnistError` in an exception's chain of causes."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CvaeMnistError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
