"""The trained CVAE as an MLflow pyfunc model that generates digits on request.

Input rows ``{digit, n_samples, seed}`` (seed optional); output, per row, ``n_samples``
images of 28x28 floats in [0, 1]. MLflow derives the model's signature from the type
hints of ``predict`` and validates every request against ``GenerationRequest`` before
``predict`` runs, so a bad request gets a 400 answer naming the field, and the
server keeps serving.
"""

from __future__ import annotations

import secrets
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel, ConfigDict, Field

from cvae_mnist.datasets.torch_dataset import model_from_checkpoint, model_to_checkpoint
from cvae_mnist.inference import generate
from cvae_mnist.model import CVAE
from cvae_mnist.runtime import select_device

MAX_SAMPLES_PER_REQUEST = 256  # one row's images; bounds a request's time and answer size


class GenerationRequest(BaseModel):
    """One request row."""

    model_config = ConfigDict(extra="forbid")

    digit: int = Field(ge=0, le=9, description="the digit to draw, 0-9")
    n_samples: int = Field(ge=1, le=MAX_SAMPLES_PER_REQUEST, description="how many images")
    seed: int | None = Field(default=None, ge=0, description="same seed, same images; none: fresh ones")


class CVAEGenerator(PythonModel):
    """Decodes prior samples under the requested label, through ``inference.generate``."""

    def __init__(self, model: CVAE) -> None:
        self.checkpoint = model_to_checkpoint(model)  # plain data, pickled into the MLflow model
        self._model = None

    def load_context(self, context: Any) -> None:
        self._model = model_from_checkpoint(self.checkpoint, "the served model")

    def predict(
        self, model_input: list[GenerationRequest], params: dict[str, Any] | None = None
    ) -> list[list[list[list[float]]]]:
        if self._model is None:
            self.load_context(None)
        answers = []
        for request in model_input:
            seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
            labels = torch.full((request.n_samples,), request.digit, dtype=torch.long)
            images = generate(self._model, labels, seed, select_device("auto"))
            answers.append(images[:, 0].tolist())
        return answers


def latest_model_uri(name: str = "cvae_generator") -> str:
    """The URI of the newest model logged under ``name`` in the current tracking store."""
    client = MlflowClient()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    models = [
        model for model in client.search_logged_models(experiment_ids=experiments) if model.name == name
    ]
    if not models:
        raise SystemExit(
            f"No model named {name!r} is logged in {mlflow.get_tracking_uri()}: run `make run` first."
        )
    return f"models:/{max(models, key=lambda model: model.creation_timestamp).model_id}"


if __name__ == "__main__":
    print(latest_model_uri())  # noqa: T201 - for `make serve`
