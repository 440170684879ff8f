"""``TorchDataset`` saves and loads plain data holding tensors with ``torch.save``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from kedro.io import AbstractDataset

from cvae_mnist.datasets._atomic import atomic_path
from cvae_mnist.errors import ModelFileError


class TorchDataset(AbstractDataset[Any, Any]):
    """Tensors, dicts of tensors or ``state_dict``-style checkpoints in one local file.

    Saving is atomic (a temporary file renamed into place) and loading uses
    ``torch.load(weights_only=True)``, so a file can never run code when it is read.

    Example usage for the
    `YAML API <https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/>`_:

    .. code-block:: yaml

        mnist_train:
          type: cvae_mnist.datasets.TorchDataset
          filepath: data/05_model_input/mnist_train.pt
          missing_hint: run `kedro run --pipeline data_ingestion` first.
    """

    def __init__(
        self,
        *,
        filepath: str,
        missing_hint: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create a new ``TorchDataset``.

        Args:
            filepath: Local path of the file.
            missing_hint: What to tell a user who loads the file before it exists.
            metadata: Any arbitrary metadata; ignored by Kedro.
        """
        self._filepath = PurePosixPath(filepath)
        self._missing_hint = missing_hint
        self.metadata = metadata

    def load(self) -> Any:
        path = Path(self._filepath)
        if not path.exists():
            raise ModelFileError(f"{path} does not exist. {self._missing_hint}".strip())
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
            raise ModelFileError(
                f"{path} is truncated or corrupted and cannot be read ({exc}). "
                f"Delete it and produce it again. {self._missing_hint}".strip()
            ) from exc

    def save(self, data: Any) -> None:
        with atomic_path(self._filepath) as tmp:
            torch.save(data, tmp)

    def _exists(self) -> bool:
        return Path(self._filepath).exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
