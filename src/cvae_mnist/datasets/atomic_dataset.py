"""``AtomicDataset`` makes any single-file local dataset's saves atomic."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset
from kedro.io.core import parse_dataset_definition

from cvae_mnist.glue.saving import atomic_path


class AtomicDataset(AbstractDataset[Any, Any]):
    """Wraps a dataset that writes one local file (``pandas.CSVDataset``,
    ``matplotlib.MatplotlibDataset``, ``json.JSONDataset``, ...) so that it writes to a
    temporary file beside the target and renames it into place: a crash leaves the old
    complete file or the new complete file, never a partial one.

    Example usage for the
    `YAML API <https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/>`_:

    .. code-block:: yaml

        metrics:
          type: cvae_mnist.datasets.AtomicDataset
          filepath: data/08_reporting/metrics.csv
          dataset:
            type: pandas.CSVDataset
            save_args: {index: false}
    """

    def __init__(
        self, *, filepath: str, dataset: str | dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> None:
        """Create a new ``AtomicDataset``.

        Args:
            filepath: Local path of the file.
            dataset: The wrapped dataset's type, or its config without ``filepath``.
            metadata: Any arbitrary metadata; ignored by Kedro.
        """
        self._filepath = PurePosixPath(filepath)
        self._dataset_config = {"type": dataset} if isinstance(dataset, str) else dict(dataset)
        self.metadata = metadata
        # Kedro-Viz previews a dataset that has ``preview`` (a table, an image, JSON), of the
        # kind its return annotation names: the wrapped dataset's, reading the same file
        wrapped_preview = getattr(self._dataset_at(self._filepath), "preview", None)
        if wrapped_preview is not None:
            self.preview = wrapped_preview

    @property
    def filepath(self) -> str:
        """The local file (the project's hooks record and lock it)."""
        return str(self._filepath)

    def _dataset_at(self, path: str | Path) -> AbstractDataset:
        dataset_class, arguments = parse_dataset_definition({**self._dataset_config, "filepath": str(path)})
        return dataset_class(**arguments)

    def load(self) -> Any:
        return self._dataset_at(self._filepath).load()

    def save(self, data: Any) -> None:
        with atomic_path(self._filepath) as tmp:
            self._dataset_at(tmp).save(data)

    def _exists(self) -> bool:
        return Path(self._filepath).exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "dataset": self._dataset_config.get("type")}
