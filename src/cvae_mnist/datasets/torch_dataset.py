"""Datasets of tensors and models in ``torch.save`` files: plain data, CVAEs, checkpoints."""

from __future__ import annotations

import copy
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from cvae_mnist.core.model import CVAE
from cvae_mnist.glue.saving import from_checkpoint, read_tensors, to_checkpoint, write_tensors


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

    @property
    def filepath(self) -> str:
        """The local file (the project's hooks record and lock it)."""
        return str(self._filepath)

    def load(self) -> Any:
        return read_tensors(self._filepath, self._missing_hint)

    def save(self, data: Any) -> None:
        write_tensors(data, self._filepath)

    def _exists(self) -> bool:
        return Path(self._filepath).exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class CVAEDataset(TorchDataset):
    """A trained :class:`~cvae_mnist.core.model.CVAE`: ``save`` takes the model, ``load`` returns it
    ready to use, rebuilt from its saved parameters and weights (read with
    ``weights_only=True``, so the file cannot run code). While the file stays as this
    dataset last saved or read it, ``load`` returns a copy of that model instead of reading
    it again (what ``kedro.io.CachedDataset`` does, without hiding the file behind it).

    .. code-block:: yaml

        cvae_model:
          type: cvae_mnist.datasets.CVAEDataset
          filepath: data/06_models/cvae.pt
    """

    _kept: tuple[tuple[int, int], CVAE] | None = None  # (the file's mtime and size, its model)

    def _stamp(self) -> tuple[int, int]:
        stat = os.stat(self.filepath)
        return stat.st_mtime_ns, stat.st_size

    def load(self) -> CVAE:  # type: ignore[override]
        if self._kept is None or not self._exists() or self._kept[0] != self._stamp():
            model = from_checkpoint(super().load(), self.filepath)
            self._kept = self._stamp(), model
        return copy.deepcopy(self._kept[1])

    def save(self, data: CVAE) -> None:
        super().save(to_checkpoint(data))
        self._kept = self._stamp(), copy.deepcopy(data)


class CheckpointFile:
    """A checkpoint file that a node reads and rewrites while it runs: a
    :class:`cvae_mnist.engine.checkpoints.CheckpointStore`."""

    def __init__(self, dataset: TorchDataset) -> None:
        self._dataset = dataset
        self.filepath = dataset.filepath

    def exists(self) -> bool:
        return self._dataset.exists()

    def read(self) -> dict[str, Any]:
        return self._dataset.load()

    def write(self, state: dict[str, Any]) -> None:
        self._dataset.save(state)


class CheckpointDataset(TorchDataset):
    """A training checkpoint, handed to the node as a :class:`CheckpointFile`.

    A node cannot save a dataset before it returns, but training saves a checkpoint
    after every epoch: ``load()`` therefore returns a store through which the node
    reads the last checkpoint and writes new ones (atomically, like ``TorchDataset``),
    while the file's location stays in the catalog.

    .. code-block:: yaml

        training_checkpoint:
          type: cvae_mnist.datasets.CheckpointDataset
          filepath: data/06_models/checkpoint.pt
    """

    def load(self) -> CheckpointFile:  # type: ignore[override]
        return CheckpointFile(TorchDataset(filepath=self.filepath, missing_hint=self._missing_hint))

    def save(self, data: Any) -> None:
        raise DatasetError("CheckpointDataset is written by the training node through its CheckpointFile.")

    def _exists(self) -> bool:
        return True  # the store is always available; the file itself may not exist yet
