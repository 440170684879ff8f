"""The training engine: Adam steps on any objective, epochs, test scores, checkpoints and
resume; it trains the CVAE and the digit classifier alike. No Kedro here."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvae_mnist.core.runtime import World, mixed_precision_dtype, progress
from cvae_mnist.core.schema import History, Split
from cvae_mnist.engine import distributed
from cvae_mnist.engine.checkpoints import CheckpointStore, resume_from, rng_state
from cvae_mnist.errors import TrainingDivergedError

logger = logging.getLogger(__name__)

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, int | None], dict[str, torch.Tensor]]


def batches(
    data: Split, batch_size: int, generator: torch.Generator | None = None, world: World = World()
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches sliced from the tensors, shuffled when a generator is given.

    With several processes, ``batch_size`` is per process: every rank walks the same order
    in global batches of ``batch_size x world.size`` images and yields its slice of each.
    The last ``n % world.size`` images of the order are left out, so that every rank gets
    as many images as the others (a different few each epoch when shuffled).
    """
    images, labels = data["images"], data["labels"]
    n = len(labels)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order[: n - n % world.size]
    for global_batch in order.to(labels.device).split(batch_size * world.size):
        index = world.share(global_batch)
        yield images[index], labels[index]


CHECK_EVERY = 20  # batches between reads of the loss (divergence check, progress bar)


class Trainer:
    """A model, its Adam optimiser and learning-rate schedule: one training step at a time.

    Args:
        model: The network, already on ``device``.
        objective: Its loss terms on a batch; ``step`` is None when scoring held-out data.
        lr: Adam's learning rate (the peak of a schedule).
        total_steps: Optimiser steps planned, for a schedule.
        device: Where the batches go.
        name: The parameter section, for messages (``training`` names ``training.lr``).
        schedule: ``constant``, ``onecycle`` or ``cosine``, stepped after every batch.
        betas: Adam's betas.
        mixed_precision: bf16 autocast where :func:`mixed_precision_dtype` says it pays.
        compile: ``torch.compile`` the training step.
        augment: Applied to each training batch with the shuffling generator.
        world: The processes that train this model together (one without torchrun);
            ``model`` is then wrapped in ``DistributedDataParallel``.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        *,
        lr: float,
        total_steps: int,
        device: torch.device,
        name: str,
        schedule: str = "constant",
        betas: tuple[float, float] = (0.9, 0.999),
        mixed_precision: bool = True,
        compile: bool = False,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        world: World = World(),
    ) -> None:
        self.model, self.objective, self.device, self.name = model, objective, device, name
        self.lr, self.augment, self.world = lr, augment, world
        # the network itself: its weights are the state; a DistributedDataParallel wrapper
        # only adds the all-reduce of the gradients
        self.network: nn.Module = model.module if isinstance(model, DistributedDataParallel) else model
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=lr, betas=betas, fused=device.type in {"cpu", "cuda"}
        )
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        if schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, lr, total_steps=total_steps)
        elif schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        self.autocast_dtype = mixed_precision_dtype(device) if mixed_precision else None
        self.step = 0  # optimiser steps taken so far
        self._step = torch.compile(self._plain_step) if compile else self._plain_step

    def _terms(self, x: torch.Tensor, y: torch.Tensor, step: int | None) -> dict[str, torch.Tensor]:
        if self.autocast_dtype is None:  # no autocast context at all: torch < 2.5 has none for MPS
            return self.objective(self.model, x, y, step)
        with torch.autocast(self.device.type, self.autocast_dtype):
            return self.objective(self.model, x, y, step)

    def _plain_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        terms = self._terms(x, y, step)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        return terms

    def _global_mean(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """The terms as floats, averaged over the ranks (each holds an equal share of the data)."""
        if self.world.size == 1:
            return {key: value.item() for key, value in terms.items()}
        values = torch.stack([value.detach().float() for value in terms.values()]).cpu()
        values = distributed.all_reduce_sum(values) / self.world.size
        return dict(zip(terms, values.tolist()))

    def train_epoch(
        self, data: Split, batch_size: int, generator: torch.Generator, description: str
    ) -> dict[str, float]:
        """One pass over ``data`` in shuffled batches (``batch_size`` per process); returns
        the mean terms per image."""
        self.model.train()
        sums: dict[str, torch.Tensor] = {}  # on the device: read back only every CHECK_EVERY batches
        images_per_step = batch_size * self.world.size
        total = math.ceil(len(data["labels"]) // self.world.size * self.world.size / images_per_step)
        shown = description if self.world.main else None  # one progress bar, rank 0's
        bar = progress(batches(data, batch_size, generator, self.world), total, shown)
        seen = 0
        for batch, (images, labels) in enumerate(bar, start=1):
            x = self.augment(images, generator) if self.augment else images
            terms = self._step(x, labels, self.step)
            self.step += 1
            if self.scheduler is not None:
                self.scheduler.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() * len(labels)
            seen += len(labels)
            # One process reads the loss back every CHECK_EVERY batches (a GPU waits only then).
            # Several compare it every step, in the main thread: a rank that died is then found
            # by a collective that raises here, not by DDP's background all-reduce, whose
            # failure can abort the process before the run is marked failed.
            if self.world.size > 1 or batch == 1 or batch % CHECK_EVERY == 0 or batch == total:
                loss = self._global_mean({"loss": terms["loss"]})["loss"]
                if not math.isfinite(loss):
                    raise TrainingDivergedError(
                        f"The {self.name} loss became {loss} at {description}, by batch {batch}. "
                        f"The learning rate ({self.name}.lr = {self.lr}) is the likely cause: lower it."
                    )
                if shown is not None:
                    bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
        return {key: value / seen for key, value in self._global_mean(sums).items()}

    @torch.no_grad()
    def evaluate(self, data: Split, batch_size: int) -> dict[str, float]:
        """The objective's mean terms per image on held-out data (``batch_size`` per process)."""
        self.model.eval()
        sums: dict[str, float] = {}
        seen = 0
        for x, y in batches(data, batch_size, world=self.world):
            for key, value in self._global_mean(self._terms(x, y, None)).items():
                sums[key] = sums.get(key, 0.0) + value * len(y)
            seen += len(y)
        return {key: total / seen for key, total in sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]


def fit(
    trainer: Trainer,
    train: Split,
    test: Split | None,
    *,
    epochs: int,
    batch_size: int,
    test_batch_size: int,
    generator: torch.Generator,
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    series: str = "training",
) -> History:
    """Train for ``epochs``, scoring ``test`` after each; write a checkpoint after each epoch.

    Each epoch's values go out as a log record of this module that carries them
    (``record.epoch_values``, ``record.step``, ``record.series``): a tracker can show them as
    they come (the project's MLflow hook does) with no tracking code here.

    With ``resume`` and an existing checkpoint, training continues after its last epoch and
    ends bit for bit as an uninterrupted run would on the same device. ``settings`` are
    saved in the checkpoint, and a checkpoint written with other settings is refused.

    Returns:
        Per epoch: ``epoch``, ``seconds`` and ``train_<term>`` / ``test_<term>`` of every
        objective term.
    """
    settings = settings or {}
    history: History = {"epoch": [], "seconds": []}
    if resume and checkpoint is not None and checkpoint.exists():
        history = resume_from(checkpoint, trainer, generator, settings)
        for index, epoch in enumerate(history["epoch"]):  # the epochs a tracker of this run has not seen
            values = {key: series_[index] for key, series_ in history.items() if key != "epoch"}
            logger.info(
                "epoch %d/%d: restored from the checkpoint",
                epoch,
                epochs,
                extra=_carrying(values, epoch, series),
            )
    for epoch in range(len(history["epoch"]) + 1, epochs + 1):
        started = time.perf_counter()
        try:
            train_terms = trainer.train_epoch(train, batch_size, generator, f"epoch {epoch}/{epochs}")
        except TrainingDivergedError as error:
            kept = (
                f" The checkpoint of epoch {epoch - 1} is kept in {checkpoint.filepath}."
                if checkpoint
                else ""
            )
            raise TrainingDivergedError(f"{error}{kept if epoch > 1 else ''}") from None
        test_terms = trainer.evaluate(test, test_batch_size) if test is not None else {}
        history["epoch"].append(epoch)
        history["seconds"].append(time.perf_counter() - started)
        for split, terms in (("train", train_terms), ("test", test_terms)):
            for key, value in terms.items():
                history.setdefault(f"{split}_{key}", []).append(value)
        logger.log(
            logging.INFO if trainer.world.main else logging.DEBUG,
            "epoch %d/%d: train loss %.2f%s (%.1f s)",
            epoch,
            epochs,
            train_terms["loss"],
            f", test loss {test_terms['loss']:.2f}" if test_terms else "",
            history["seconds"][-1],
            extra=_carrying(
                {key: values[-1] for key, values in history.items() if key != "epoch"}, epoch, series
            ),
        )
        if checkpoint is not None:
            checkpoint.write(
                {
                    "epoch": epoch,
                    "settings": settings,
                    "trainer": trainer.state_dict(),
                    "rng": rng_state(generator, trainer.device),
                    "history": history,
                }
            )
    return history


def _carrying(values: dict[str, float], epoch: int, series: str) -> dict[str, Any]:
    return {"epoch_values": values, "step": epoch, "series": series}
