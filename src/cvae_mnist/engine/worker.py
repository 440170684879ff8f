"""The other ranks of a torchrun job: they wait for rank 0's pipeline to train, and train
with it (``cvae_mnist.engine.recipe.train_rank``) whenever it does. No Kedro here."""

from __future__ import annotations

import logging
from typing import Any

from cvae_mnist.core.runtime import World
from cvae_mnist.engine import distributed
from cvae_mnist.engine.recipe import train_rank
from cvae_mnist.errors import DistributedError
from cvae_mnist.params import ModelParams, TrainingParams

logger = logging.getLogger(__name__)


class _ReceivedCheckpoint:
    """Rank 0's checkpoint as another rank holds it: read-only, for resuming."""

    filepath = "rank 0's checkpoint"

    def __init__(self, state: dict[str, Any] | None) -> None:
        self._state = state

    def exists(self) -> bool:
        return self._state is not None

    def read(self) -> dict[str, Any]:
        return self._state

    def write(self, state: dict[str, Any]) -> None:
        """Only rank 0 writes checkpoints."""


def serve(world: World) -> int:
    """Another rank of a torchrun job: train with rank 0 whenever it trains, until it stops.

    Returns:
        The exit code: 0 once rank 0 has stopped, 1 if it could not be reached.
    """
    while True:
        try:
            command, payload = distributed.receive()
        except DistributedError as error:
            logger.error("%s", error)
            return 1
        if command == "stop":
            return 0
        tensors = distributed.broadcast_tensors(None, payload["tensors"])
        train = {k.removeprefix("train."): v for k, v in tensors.items() if k.startswith("train.")}
        test = {k.removeprefix("test."): v for k, v in tensors.items() if k.startswith("test.")}
        try:
            train_rank(
                ModelParams.model_validate(payload["model"]),
                train,
                test,
                TrainingParams.model_validate(payload["training"]),
                payload["seed"],
                _ReceivedCheckpoint(payload["resume"]),
                world,
            )
        except Exception as error:  # noqa: BLE001 - rank 0 reports the run's outcome; this rank waits for it
            logger.warning("rank %d: training stopped: %s", world.rank, " ".join(str(error).split()))
