"""``GeneratorModelDataset`` logs a trained CVAE to MLflow as a servable pyfunc model."""

from __future__ import annotations

import logging
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError
from mlflow.models.model import ModelInfo

import cvae_mnist
from cvae_mnist.core.model import CVAE
from cvae_mnist.glue.saving import signals_held, to_checkpoint, write_tensors
from cvae_mnist.glue.serving import WEIGHTS

logger = logging.getLogger(__name__)

PACKAGE = Path(cvae_mnist.__file__).parent
# what the served code imports (cvae_mnist.glue.serving and the modules it uses)
REQUIREMENTS = ("mlflow", "torch", "pydantic", "numpy")


class GeneratorModelDataset(AbstractDataset[CVAE, Any]):
    """The trained CVAE, logged to the active MLflow run as the pyfunc model of
    ``cvae_mnist.glue.serving`` (``make serve`` serves it).

    The model is logged "from code": MLflow keeps ``cvae_mnist/glue/served_model.py`` and the
    package's code beside the weights, a ``cvae.pt`` that is read with ``weights_only=True``,
    so loading the model runs no pickle. Without an active MLflow run (tracking disabled)
    nothing is logged.

    Example usage for the
    `YAML API <https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/>`_:

    .. code-block:: yaml

        cvae_generator:
          type: cvae_mnist.datasets.GeneratorModelDataset
          name: cvae_generator
    """

    def __init__(self, *, name: str = "cvae_generator", metadata: dict[str, Any] | None = None) -> None:
        """Create a new ``GeneratorModelDataset``.

        Args:
            name: The logged model's name in the run.
            metadata: Any arbitrary metadata; ignored by Kedro.
        """
        self._name = name
        self.model_info: ModelInfo | None = None
        self.metadata = metadata

    def save(self, data: CVAE) -> None:
        if mlflow.active_run() is None:
            logger.info("No MLflow run is active: %s is not logged", self._name)
            return
        with tempfile.TemporaryDirectory(prefix="cvae-generator-") as folder, signals_held():
            weights = Path(folder) / "cvae.pt"
            write_tensors(to_checkpoint(data), weights)
            self.model_info = mlflow.pyfunc.log_model(
                name=self._name,
                python_model=str(PACKAGE / "glue" / "served_model.py"),
                artifacts={WEIGHTS: str(weights)},
                code_paths=[str(PACKAGE)],
                pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
            )

    def load(self) -> Any:
        if self.model_info is None:
            raise DatasetError(f"{self._name} is logged by a run and loaded from MLflow by its URI.")
        return mlflow.pyfunc.load_model(self.model_info.model_uri)

    def _exists(self) -> bool:
        return self.model_info is not None

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "model_uri": self.model_info.model_uri if self.model_info else None}
