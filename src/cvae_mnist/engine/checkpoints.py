"""Training checkpoints: where they are kept, every random state they hold, and resuming
from one bit for bit. No Kedro here."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Protocol

import torch

from cvae_mnist.core.schema import History
from cvae_mnist.errors import ModelFileError

if TYPE_CHECKING:
    from cvae_mnist.engine.trainer import Trainer

logger = logging.getLogger(__name__)


class CheckpointStore(Protocol):
    """Where :func:`fit` reads and writes its checkpoint (``cvae_mnist.datasets.CheckpointDataset``)."""

    filepath: str

    def exists(self) -> bool: ...
    def read(self) -> dict[str, Any]: ...
    def write(self, state: dict[str, Any]) -> None: ...


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state training draws from. Of a GPU, only the training device's: under
    torchrun every rank's device draws the same numbers, so rank 0's state is every rank's."""
    device_state = None
    if device.type == "cuda":
        device_state = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        device_state = torch.mps.get_rng_state()
    return {
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
        "python": random.getstate(),
        "device": {"type": device.type, "state": device_state},
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Restore :func:`rng_state`; a GPU's state only on a GPU of the same kind (a checkpoint
    may resume on another device, then bit for bit only up to that device's arithmetic)."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    random.setstate(state["python"])
    saved = state.get("device") or {}
    if saved.get("state") is None or saved.get("type") != device.type:
        return
    if device.type == "cuda":
        torch.cuda.set_rng_state(saved["state"], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(saved["state"])


def resume_from(
    checkpoint: CheckpointStore, trainer: Trainer, generator: torch.Generator, settings: dict
) -> History:
    """Restore the trainer and the random state from ``checkpoint``, if it was written with ``settings``."""
    state = checkpoint.read()
    if not {"settings", "trainer", "rng", "history"} <= set(state):
        raise ModelFileError(
            f"Cannot resume from {checkpoint.filepath}: it is not a checkpoint of this version of "
            "cvae-mnist. Set training.resume=false to start over."
        )
    differences = [
        f"{key}: checkpoint {state['settings'].get(key)!r}, parameters {settings.get(key)!r}"
        for key in sorted(settings.keys() | state["settings"].keys())
        if state["settings"].get(key) != settings.get(key)
    ]
    if differences:
        raise ModelFileError(
            f"Cannot resume from {checkpoint.filepath}: it was written with other settings "
            f"({'; '.join(differences)}). Resume with the settings it was written with, "
            "or set training.resume=false to start over."
        )
    trainer.load_state_dict(state["trainer"])
    set_rng_state(state["rng"], generator, trainer.device)
    logger.info("Resuming from %s after epoch %d", checkpoint.filepath, state["epoch"])  # every rank says it
    return state["history"]
