"""The training engine: batches, the optimisation loop, checkpoints and resume. No Kedro here.

One engine trains both networks of the project. A :class:`Trainer` takes Adam steps on an
objective ``(model, images, labels, step) -> {"loss": ..., other terms}``; :func:`fit`
runs the epochs, scores the test set after each, and writes and resumes checkpoints.
:func:`train_cvae` puts them together for the CVAE; ``cvae_mnist.classifier`` for the
digit classifier. Under torchrun, :func:`train_cvae` trains on every process of the job
(``cvae_mnist.distributed``): rank 0 calls it, the other ranks wait in :func:`serve`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvae_mnist import distributed
from cvae_mnist.adversary import LabelAidedCVAE
from cvae_mnist.augmentation import random_affine
from cvae_mnist.distributed import World
from cvae_mnist.errors import (
    CvaeMnistError,
    DataError,
    DistributedError,
    ModelFileError,
    TrainingDivergedError,
)
from cvae_mnist.fastpath import accelerated
from cvae_mnist.losses import cvae_loss
from cvae_mnist.model import CVAE
from cvae_mnist.params import ModelParams, TrainingParams
from cvae_mnist.runtime import (
    deterministic_algorithms,
    mixed_precision_dtype,
    progress,
    seed_everything,
    select_device,
)

logger = logging.getLogger(__name__)

Split = dict[str, torch.Tensor]  # {"images": float32 [N, 1, 28, 28] in [0, 1], "labels": int64 [N]}
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, int | None], dict[str, torch.Tensor]]
History = dict[str, list[float]]


class CheckpointStore(Protocol):
    """Where :func:`fit` reads and writes its checkpoint (``cvae_mnist.datasets.CheckpointDataset``)."""

    filepath: str

    def exists(self) -> bool: ...
    def read(self) -> dict[str, Any]: ...
    def write(self, state: dict[str, Any]) -> None: ...


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
        untrained: Prefixes of state entries that training leaves alone: checkpoints
            neither save nor restore them.
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
        untrained: tuple[str, ...] = (),
        world: World = World(),
    ) -> None:
        self.model, self.objective, self.device, self.name = model, objective, device, name
        self.lr, self.augment, self.untrained, self.world = lr, augment, untrained, world
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
            "model": {k: v for k, v in self.network.state_dict().items() if not k.startswith(self.untrained)},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kept = {k: v for k, v in self.network.state_dict().items() if k.startswith(self.untrained)}
        self.network.load_state_dict({**state["model"], **kept})
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Restore :func:`_rng_state`; a GPU's state only on a GPU of the same kind (a checkpoint
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


def _resume(
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
    _set_rng_state(state["rng"], generator, trainer.device)
    logger.info("Resuming from %s after epoch %d", checkpoint.filepath, state["epoch"])  # every rank says it
    return state["history"]


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
) -> History:
    """Train for ``epochs``, scoring ``test`` after each; write a checkpoint after each epoch.

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
        history = _resume(checkpoint, trainer, generator, settings)
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
        )
        if checkpoint is not None:
            checkpoint.write(
                {
                    "epoch": epoch,
                    "settings": settings,
                    "trainer": trainer.state_dict(),
                    "rng": _rng_state(generator, trainer.device),
                    "history": history,
                }
            )
    return history


@dataclass(frozen=True)
class CVAEObjective:
    """Reconstruction + beta * KL, beta ramped up linearly over the first ``warmup_steps``;
    with a :class:`LabelAidedCVAE`, plus its aids' losses (the swap's with its weight)."""

    loss: str
    beta: float
    warmup_steps: float = 0
    world: World = World()
    swap_weight: float = 0.0

    def kl_weight(self, step: int | None) -> float:
        if step is None or self.warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.warmup_steps)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int | None
    ) -> dict[str, torch.Tensor]:
        noise = None  # one process: the model draws it
        if self.world.size > 1:  # this rank's share of the noise of the whole global batch
            latent_dim = getattr(model, "module", model).config.latent_dim
            dtype = (
                torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
            )
            drawn = torch.randn(len(x) * self.world.size, latent_dim, device=x.device, dtype=dtype)
            noise = self.world.share(drawn)
        logits, mu, logvar, *aids = model(x, y, noise)
        terms = cvae_loss(logits, x, mu, logvar, self.loss, self.kl_weight(step))
        for name, value in (aids[0] if aids else {}).items():
            terms[name] = value
            terms["loss"] = terms["loss"] + value * (self.swap_weight if name == "swap" else 1.0)
        return terms


# What training depends on: a checkpoint written with other values cannot be resumed.
RESUME_SETTINGS = (
    "batch_size", "lr", "adam_beta1", "loss", "beta", "kl_warmup_epochs", "lr_schedule",
    "augment_rotation", "augment_shift", "adversary_weight", "swap_weight", "swap_fraction",
)  # fmt: skip


def resume_settings(
    model: ModelParams, training: TrainingParams, seed: int, world: World = World()
) -> dict[str, Any]:
    keys = RESUME_SETTINGS + (
        ("epochs",) if training.lr_schedule != "constant" else ()
    )  # a schedule spans them
    return {
        **{f"model.{k}": v for k, v in model.model_dump().items()},
        **{f"training.{k}": getattr(training, k) for k in keys},
        "seed": seed,
        # the global batch and the random draws depend on it (absent for one process)
        **({"processes": world.size} if world.size > 1 else {}),
    }


def scaled_lr(training: TrainingParams, processes: int) -> float:
    """Adam's learning rate for ``processes`` times the batch: ``training.lr`` times N
    (``lr_scaling: linear``), times the square root of N (``sqrt``), or as it is (``none``)."""
    factor = {"none": 1.0, "linear": float(processes), "sqrt": math.sqrt(processes)}[training.lr_scaling]
    return training.lr * factor


def steps_per_epoch(n_images: int, batch_size: int, world: World = World()) -> int:
    return math.ceil((n_images - n_images % world.size) / (batch_size * world.size))


def cvae_trainer(
    model: nn.Module, training: TrainingParams, device: torch.device, steps: int, world: World = World()
) -> Trainer:
    """The engine set up for the CVAE as ``training`` asks, ``steps`` optimiser steps per epoch
    (fast forms and the distributed wrapper are :func:`train_cvae`'s)."""
    augment = None
    if training.augment_rotation or training.augment_shift:

        def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return random_affine(images, training.augment_rotation, training.augment_shift, generator, world)

    return Trainer(
        model,
        CVAEObjective(
            training.loss, training.beta, training.kl_warmup_epochs * steps, world, training.swap_weight
        ),
        lr=scaled_lr(training, world.size),
        total_steps=training.epochs * steps,
        device=device,
        name="training",
        schedule=training.lr_schedule,
        betas=(training.adam_beta1, 0.999),
        mixed_precision=training.mixed_precision,
        compile=training.compile,
        augment=augment,
        world=world,
    )


def train_cvae(
    model_params: ModelParams,
    train: Split,
    test: Split,
    training: TrainingParams,
    seed: int,
    checkpoint: CheckpointStore | None = None,
) -> tuple[CVAE, History]:
    """Build a CVAE from ``seed`` and train it; return it on the CPU with its history.

    Under torchrun (rank 0 only calls this), the other ranks are sent the arguments, the
    data and the checkpoint to resume from, and every process trains its share.
    """
    world = distributed.current()
    if world.size > 1:
        for name, split in (("training", train), ("test", test)):
            if len(split["labels"]) < world.size:
                raise DataError(
                    f"torchrun started {world.size} processes, but the {name} set has only "
                    f"{len(split['labels'])}: every process needs a share of each batch. "
                    "Start fewer processes (--nproc_per_node) or use more data."
                )
        state = (
            checkpoint.read() if training.resume and checkpoint is not None and checkpoint.exists() else None
        )
        tensors = {f"train.{k}": v for k, v in train.items()} | {f"test.{k}": v for k, v in test.items()}
        arguments = {"model": model_params.model_dump(), "training": training.model_dump(), "seed": seed}
        distributed.send("train", {**arguments, "tensors": distributed.tensor_keys(tensors), "resume": state})
        distributed.broadcast_tensors(tensors, distributed.tensor_keys(tensors))
    return _train(model_params, train, test, training, seed, checkpoint, world)


def _train(
    model_params: ModelParams,
    train: Split,
    test: Split,
    training: TrainingParams,
    seed: int,
    checkpoint: CheckpointStore | None,
    world: World,
) -> tuple[CVAE, History]:
    generator = seed_everything(seed)  # the same on every rank: each takes its share of the draws
    if training.num_threads:
        torch.set_num_threads(training.num_threads)
    device = world.device(select_device(training.device))
    deterministic_algorithms(device, training.deterministic)
    model = CVAE(model_params).to(device)
    fast = training.fast_path == "auto"
    with accelerated(model, device) if fast else nullcontext():
        network: nn.Module = model
        if training.adversary_weight > 0 or training.swap_weight > 0:  # trained beside it, not saved
            network = LabelAidedCVAE(
                model, training.adversary_weight, training.swap_weight, training.swap_fraction, world=world
            ).to(device)
        synced_norm = world.size > 1 and device.type == "cuda"
        if world.size > 1:
            if (
                synced_norm
            ):  # one set of batch statistics over the global batch (it swaps the layers in place)
                network = nn.SyncBatchNorm.convert_sync_batchnorm(network, distributed.training_group())
            network = DistributedDataParallel(
                network,
                device_ids=[device.index] if device.type == "cuda" else None,
                process_group=distributed.training_group(),
            )
        steps = steps_per_epoch(len(train["labels"]), training.batch_size, world)
        trainer = cvae_trainer(network, training, device, steps, world)
        if world.main:
            logger.info(
                "Training on %s (%d threads, autocast %s, fast path %s, compile %s)%s",
                device,
                torch.get_num_threads(),
                trainer.autocast_dtype,
                "on" if fast and device.type == "cpu" else "off",
                training.compile,
                f"; {world.size} processes of {training.batch_size} images per batch, learning rate "
                f"{trainer.lr:g} ({training.lr_scaling} scaling)"
                if world.size > 1
                else "",
            )
        logger.log(
            logging.INFO if world.size > 1 else logging.DEBUG,
            "rank %d of %d trains on %d of every %d images of each global batch",
            world.rank,
            world.size,
            training.batch_size,
            training.batch_size * world.size,
        )
        try:
            history = fit(
                trainer,
                {key: value.to(device) for key, value in train.items()},
                {key: value.to(device) for key, value in test.items()},
                epochs=training.epochs,
                batch_size=training.batch_size,
                test_batch_size=training.test_batch_size,
                generator=generator,
                checkpoint=checkpoint,
                resume=training.resume,
                settings=resume_settings(model_params, training, seed, world),
            )
        except RuntimeError as error:  # gloo and NCCL report a peer that died or went silent so
            if world.size == 1 or isinstance(error, CvaeMnistError) or not _peer_failure(error):
                raise
            raise DistributedError(
                f"Training stopped on rank {world.rank} of {world.size}: another process of this torchrun "
                f"job stopped or stopped answering ({str(error).splitlines()[0]}). torchrun's summary "
                "names the process that failed; the checkpoint of the last complete epoch is kept."
            ) from None
    if synced_norm:  # SyncBatchNorm back to BatchNorm2d
        plain = CVAE(model_params)
        plain.load_state_dict(model.state_dict())
        model = plain
    return model.cpu(), history


def _peer_failure(error: RuntimeError) -> bool:
    return isinstance(error, dist.DistError) or any(
        word in str(error) for word in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out")
    )


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
            _train(
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
