"""The training recipes: the CVAE's (its objective, on one process or on each torchrun
process) and the digit classifier's. No Kedro here."""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvae_mnist.core.adversary import LabelAidedCVAE
from cvae_mnist.core.augmentation import random_affine
from cvae_mnist.core.classifier import DigitClassifier
from cvae_mnist.core.fastpath import accelerated
from cvae_mnist.core.losses import cvae_loss
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.runtime import World, deterministic_algorithms, seed_everything, select_device
from cvae_mnist.core.schema import History, Split
from cvae_mnist.engine import distributed
from cvae_mnist.engine.trainer import CheckpointStore, Trainer, fit
from cvae_mnist.errors import DataError
from cvae_mnist.params import ClassifierParams, ModelParams, TrainingParams

logger = logging.getLogger(__name__)


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
    (fast forms and the distributed wrapper are :func:`train_rank`'s)."""
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


def fit_cvae(
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
    return train_rank(model_params, train, test, training, seed, checkpoint, world)


def train_rank(
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
    with accelerated(model, device) if fast else nullcontext(), distributed.peer_failures_named(world):
        steps = steps_per_epoch(len(train["labels"]), training.batch_size, world)
        trainer = cvae_trainer(_network(model, training, device, world), training, device, steps, world)
        _log_setup(trainer, training, device, world, fast and device.type == "cpu")
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
    if world.size > 1 and device.type == "cuda":  # SyncBatchNorm back to BatchNorm2d
        plain = CVAE(model_params)
        plain.load_state_dict(model.state_dict())
        model = plain
    return model.cpu(), history


def _network(model: CVAE, training: TrainingParams, device: torch.device, world: World) -> nn.Module:
    """What the optimizer trains: the CVAE, with the label aids beside it (not saved), under
    DDP on several processes."""
    network: nn.Module = model
    if training.adversary_weight > 0 or training.swap_weight > 0:
        network = LabelAidedCVAE(
            model, training.adversary_weight, training.swap_weight, training.swap_fraction, world=world
        ).to(device)
    if world.size == 1:
        return network
    if device.type == "cuda":  # one set of batch statistics over the global batch (swaps layers in place)
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network, distributed.training_group())
    return DistributedDataParallel(
        network,
        device_ids=[device.index] if device.type == "cuda" else None,
        process_group=distributed.training_group(),
    )


def _log_setup(
    trainer: Trainer, training: TrainingParams, device: torch.device, world: World, fast: bool
) -> None:
    if world.main:
        shared = (
            f"; {world.size} processes of {training.batch_size} images per batch, learning rate "
            f"{trainer.lr:g} ({training.lr_scaling} scaling)"
        )
        logger.info(
            "Training on %s (%d threads, autocast %s, fast path %s, compile %s)%s",
            device,
            torch.get_num_threads(),
            trainer.autocast_dtype,
            "on" if fast else "off",
            training.compile,
            shared if world.size > 1 else "",
        )
    if world.size > 1:
        logger.info(
            "rank %d of %d trains on %d of every %d images of each global batch",
            world.rank,
            world.size,
            training.batch_size,
            training.batch_size * world.size,
        )


def _cross_entropy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int | None
) -> dict[str, torch.Tensor]:
    return {"loss": F.cross_entropy(model(images).float(), labels)}


def train_classifier(
    train: Split, params: ClassifierParams, device: torch.device = torch.device("cpu")
) -> DigitClassifier:
    """Adam on cross-entropy over shuffled batches on ``device``, with a one-cycle learning
    rate peaking at ``params.lr`` (99 % on MNIST in fewer epochs than a constant rate).
    Returned on the CPU."""
    generator = seed_everything(params.seed)
    model = DigitClassifier().to(device)
    steps_per_epoch = -(-len(train["labels"]) // params.batch_size)
    trainer = Trainer(
        model,
        _cross_entropy,
        lr=params.lr,
        total_steps=params.epochs * steps_per_epoch,
        device=device,
        name="classifier",
        schedule="onecycle",
    )
    fit(
        trainer,
        {key: value.to(device) for key, value in train.items()},
        None,
        epochs=params.epochs,
        batch_size=params.batch_size,
        test_batch_size=params.batch_size,
        generator=generator,
        series="classifier",
    )
    return model.eval().cpu()
