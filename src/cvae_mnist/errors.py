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
