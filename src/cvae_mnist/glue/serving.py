"""The trained CVAE as an MLflow pyfunc model that generates digits on request, its rows
validated by MLflow against :class:`GenerationRequest` and its weights read without pickle."""

from __future__ import annotations

import logging
import secrets
import time
from contextvars import ContextVar
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel, ConfigDict, Field

from cvae_mnist.core.inference import generate
from cvae_mnist.core.runtime import select_device
from cvae_mnist.glue.saving import load_cvae

logger = logging.getLogger(__name__)

MAX_SAMPLES_PER_ROW = 256
MAX_IMAGES_PER_REQUEST = 1024  # about 20 MB of JSON in the answer
REQUEST_SECONDS = 30.0  # from its arrival to its answer (cvae_mnist.glue.model_server)
# When the request must stop drawing (time.monotonic()), set by the server as a request arrives.
DEADLINE: ContextVar[float | None] = ContextVar("DEADLINE", default=None)
WEIGHTS = "cvae"  # the artifact that holds cvae.pt
MODEL_NAME = "cvae_generator"  # in the runs and in the Model Registry
CHAMPION = "champion"  # the alias of the registered version that `make serve` serves


class GenerationRequest(BaseModel):
    """One request row."""

    model_config = ConfigDict(extra="forbid")

    digit: int = Field(ge=0, le=9, description="the digit to draw, 0-9")
    n_samples: int = Field(ge=1, le=MAX_SAMPLES_PER_ROW, description="how many images")
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="same seed, same images; none: fresh ones"
    )


class CVAEGenerator(PythonModel):
    """Decodes prior samples under the requested label, through ``inference.generate``."""

    def load_context(self, context: Any) -> None:
        self._model = load_cvae(context.artifacts[WEIGHTS])
        self._device = select_device("auto")

    def predict(
        self, model_input: list[GenerationRequest], params: dict[str, Any] | None = None
    ) -> list[list[list[list[float]]]]:
        asked = sum(request.n_samples for request in model_input)
        if asked > MAX_IMAGES_PER_REQUEST:
            raise MlflowException(
                f"This request asks for {asked} images in {len(model_input)} rows; one request may "
                f"ask for at most {MAX_IMAGES_PER_REQUEST} in all. Split it.",
                INVALID_PARAMETER_VALUE,
            )
        deadline = DEADLINE.get() or time.monotonic() + REQUEST_SECONDS
        answers = []
        try:
            for request in model_input:
                if time.monotonic() > deadline:
                    raise MlflowException(
                        f"The request took longer than {REQUEST_SECONDS:.0f} s and was stopped; "
                        "ask for fewer images at a time.",
                        TEMPORARILY_UNAVAILABLE,
                    )
                seed = request.seed if request.seed is not None else secrets.randbelow(2**63)
                labels = torch.full((request.n_samples,), request.digit, dtype=torch.long)
                answers.append(generate(self._model, labels, seed, self._device)[:, 0].tolist())
        except MlflowException:
            raise
        except Exception:
            logger.exception("Generation failed")  # the details stay in the server's log
            raise MlflowException("Generation failed on the server; see its log.", INTERNAL_ERROR) from None
        return answers


def champion_uri() -> str:
    """``models:/cvae_generator@champion`` if a full default run registered one (for `make serve`)."""
    try:
        mlflow.MlflowClient().get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        raise SystemExit(
            f"Error: no model is registered as {MODEL_NAME}@{CHAMPION} in {mlflow.get_tracking_uri()}: "
            "a full default run (`make run`) registers one; or serve another with MODEL=models:/<id>."
        ) from None
    return f"models:/{MODEL_NAME}@{CHAMPION}"


if __name__ == "__main__":
    print(champion_uri())  # noqa: T201 - for `make serve`
