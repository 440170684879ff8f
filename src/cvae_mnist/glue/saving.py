"""Files of tensors and models: atomic writes, reads that cannot run code, clear errors. No Kedro."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import signal
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from cvae_mnist.core.model import CVAE
from cvae_mnist.errors import DataError, ModelFileError
from cvae_mnist.params import ModelParams, PriorParams

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched. Temporary
    files that a killed writer left beside ``path`` are removed first (a run owns its
    output folders, see ``cvae_mnist.glue.hooks.RunLockHook``, so no other writer is alive).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.stem}.tmp-"  # hidden, with the target's suffix: writers infer formats from it
        for leftover in path.parent.glob(f"{prefix}*{path.suffix}"):
            leftover.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from None
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during a step that must not be cut short, then deliver them to
    the handlers set before: a library that catches every exception (MLflow while it logs a
    model) would otherwise swallow the interrupt and let the run report success."""
    if threading.current_thread() is not threading.main_thread():  # only there can handlers change
        yield
        return
    held: list[int] = []
    previous = {n: signal.signal(n, lambda number, frame: held.append(number)) for n in INTERRUPTS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in blocks of 1 MiB (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_error(path: Path, error: OSError) -> DataError:
    """A user's message for a failed write of ``path``."""
    reason = {
        errno.ENOSPC: "the disk is full",
        getattr(errno, "EDQUOT", -1): "the disk quota is exceeded",  # no EDQUOT on Windows
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
    }.get(error.errno, error.strerror or type(error).__name__)
    return DataError(
        f"Cannot write {path}: {reason}. Nothing was written there; free some space or fix "
        "the permissions, and run again."
    )


def read_tensors(path: str | os.PathLike, missing_hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear error for a missing,
    truncated or foreign file. ``missing_hint`` says how to produce the file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path} does not exist. {missing_hint}".strip())
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ModelFileError(
            f"{path} is truncated, corrupted or not a file this project wrote, and cannot be read "
            f"({type(exc).__name__}). Delete it and produce it again. {missing_hint}".strip()
        ) from None


def write_tensors(data: Any, path: str | os.PathLike) -> None:
    """``torch.save(data, path)``, atomically. The bytes are made in memory first: a failed
    write then raises the operating system's error (a full disk, say), which torch's own
    writer reports only as an internal assertion."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def to_checkpoint(model: CVAE) -> dict[str, Any]:
    """The model as plain data for ``torch.save``: its parameters, its weights and its prior."""
    return {
        "config": model.config.model_dump(),
        "prior": model.prior_config.model_dump(),
        "state_dict": model.state_dict(),
    }


def from_checkpoint(checkpoint: Any, source: str) -> CVAE:
    """Rebuild a model saved by :func:`to_checkpoint`; ``source`` names it in messages."""
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise ModelFileError(f"{source} is not a CVAE saved by this project. Train it again.")
    try:
        # a file of a version before priors were kept in it: its prior was N(0, I), the model's default
        prior = PriorParams(**checkpoint["prior"]) if "prior" in checkpoint else None
        model = CVAE(ModelParams(**checkpoint["config"]), prior)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValidationError, RuntimeError) as exc:
        raise ModelFileError(
            f"{source} does not match the model parameters saved in it: it was written by another "
            f"version of cvae-mnist, or damaged. Train it again. ({str(exc).splitlines()[0]})"
        ) from None
    return model.eval()


def load_cvae(path: str | os.PathLike, missing_hint: str = "") -> CVAE:
    """The CVAE saved in ``path``, ready to use."""
    return from_checkpoint(read_tensors(path, missing_hint), str(path))
