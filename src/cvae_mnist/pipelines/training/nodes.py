"""Nodes of the training pipeline: the training loop as a pure function of
(data, parameters) -> (model checkpoint, per-epoch history)."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from cvae_mnist.augmentation import random_affine
from cvae_mnist.config import TrainingConfig, parse_section, parse_seed
from cvae_mnist.datasets import CheckpointStore
from cvae_mnist.errors import DataError, ModelFileError, TrainingDivergedError
from cvae_mnist.inference import encode, load_model
from cvae_mnist.losses import cvae_loss
from cvae_mnist.model import CVAE, CVAEConfig, to_checkpoint
from cvae_mnist.prior import fit_class_prior
from cvae_mnist.runtime import mixed_precision_dtype, seed_everything, select_device
from cvae_mnist.serving import CVAEGenerator

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "reconstruction", "kl")


def _batches(
    data: dict[str, torch.Tensor], batch_size: int, generator: torch.Generator | None, in_memory: bool = True
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches, shuffled when a generator is given.

    ``in_memory`` slices the batches out of the tensors; otherwise a ``DataLoader``
    collates them sample by sample, as the report's code did.
    """
    images, labels = data["images"], data["labels"]
    if not in_memory:
        return DataLoader(
            TensorDataset(images, labels),
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
        )
    order = (
        torch.randperm(len(labels), generator=generator)
        if generator is not None
        else torch.arange(len(labels))
    )
    return ((images[index], labels[index]) for index in order.to(labels.device).split(batch_size))


@dataclass
class Trainer:
    """The model, its optimizer and the speed settings: one training step at a time."""

    model: CVAE
    optimizer: torch.optim.Optimizer
    config: TrainingConfig
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    steps_per_epoch: int = 1
    step: int = 0  # optimizer steps taken so far (drives the KL warm-up)
    _step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]] = field(init=False, repr=False)

    @classmethod
    def create(
        cls, model_config: CVAEConfig, config: TrainingConfig, device: torch.device, steps_per_epoch: int = 1
    ) -> Trainer:
        model = CVAE(
            model_config,
            label_lookup=config.label_lookup,
            channels_last=config.channels_last,
            subpixel_output=config.subpixel_output,
            gemm_weight_grads=config.gemm_weight_grads,
        ).to(device)
        fused = config.fused_adam and device.type in {"cpu", "cuda"}
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, betas=(config.momentum, 0.999), fused=fused
        )
        dtype = mixed_precision_dtype(device) if config.mixed_precision else None
        trainer = cls(model, optimizer, config, device, dtype)
        trainer.steps_per_epoch = steps_per_epoch
        total = config.epochs * steps_per_epoch
        if config.lr_schedule == "onecycle":
            trainer.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=config.lr, total_steps=total
            )
        elif config.lr_schedule == "cosine":
            trainer.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return trainer

    def __post_init__(self) -> None:
        self._step = torch.compile(self._plain_step) if self.config.compile else self._plain_step

    def kl_weight(self) -> float:
        """beta, ramped up linearly over the first ``kl_warmup_epochs`` (per step)."""
        warmup_steps = self.config.kl_warmup_epochs * self.steps_per_epoch
        if warmup_steps == 0:
            return self.config.beta
        return self.config.beta * min(1.0, (self.step + 1) / warmup_steps)

    def _forward(
        self, x: torch.Tensor, y: torch.Tensor, beta: float | None = None
    ) -> tuple[torch.Tensor, ...]:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            logits, mu, logvar = self.model(x, y)
        c = self.config
        beta = c.beta if beta is None else beta
        return cvae_loss(logits, x, mu, logvar, kind=c.loss, beta=beta, fused=c.fused_bce)

    def _plain_step(self, x: torch.Tensor, y: torch.Tensor, beta: float) -> tuple[torch.Tensor, ...]:
        terms = self._forward(x, y, beta)
        self.optimizer.zero_grad(set_to_none=True)
        terms[0].backward()
        self.optimizer.step()
        return terms

    def train_epoch(
        self, data: dict[str, torch.Tensor], generator: torch.Generator, epoch: int
    ) -> dict[str, float]:
        """One pass over ``data``; returns the mean loss terms per image."""
        self.model.train()
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        progress = tqdm(
            _batches(data, self.config.batch_size, generator, self.config.in_memory_batches),
            total=math.ceil(len(data["labels"]) / self.config.batch_size),
            desc=f"epoch {epoch}/{self.config.epochs}",
            unit="batch",
            mininterval=1.0 if sys.stderr.isatty() else 30.0,  # keep logs of non-interactive runs short
        )
        c = self.config
        for batch, (images, y) in enumerate(progress, start=1):
            x = random_affine(images, c.augment_rotation, c.augment_shift, generator).to(self.device)
            terms = [value.item() for value in self._step(x, y.to(self.device), self.kl_weight())]
            self.step += 1
            if self.scheduler is not None:
                self.scheduler.step()
            if not math.isfinite(terms[0]):
                raise TrainingDivergedError(
                    f"The training loss became {terms[0]} at epoch {epoch}, batch {batch}. "
                    f"The learning rate (training.lr = {self.config.lr}) is the likely cause: lower it."
                )
            for key, value in zip(LOSS_TERMS, terms):
                sums[key] += value * len(y)
            if batch % 20 == 0:
                progress.set_postfix(loss=f"{terms[0]:.2f}", refresh=False)
        return {key: total / len(data["labels"]) for key, total in sums.items()}

    @torch.no_grad()
    def test_epoch(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        """The training objective on held-out data (one z sample per image, as in training)."""
        self.model.eval()
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        for x, y in _batches(data, self.config.test_batch_size, None):
            for key, value in zip(LOSS_TERMS, self._forward(x.to(self.device), y.to(self.device))):
                sums[key] += value.item() * len(y)
        return {key: total / len(data["labels"]) for key, total in sums.items()}


# Settings that must not change between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = (
    "batch_size", "lr", "momentum", "loss", "beta", "kl_warmup_epochs", "lr_schedule",
    "augment_rotation", "augment_shift",
)  # fmt: skip


PRIOR_KEYS = ("prior", "prior_components")  # model settings that training does not depend on


def _must_match(config: TrainingConfig) -> tuple[str, ...]:
    # a learning-rate schedule spans the planned epochs, so they must match too
    return RESUME_MUST_MATCH + (("epochs",) if config.lr_schedule != "constant" else ())


def _checkpoint_state(
    trainer: Trainer, generator: torch.Generator, epoch: int, history: dict[str, list[float]], seed: int
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model_config": asdict(trainer.model.config),
        "training": {key: getattr(trainer.config, key) for key in _must_match(trainer.config)},
        "seed": seed,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "step": trainer.step,
        "rng": {
            "torch": torch.get_rng_state(),
            "shuffle": generator.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "history": history,
    }


def _restore(
    state: dict[str, Any], trainer: Trainer, generator: torch.Generator, seed: int, filepath: str
) -> None:
    """Load a checkpoint into ``trainer`` after checking that it belongs to this run.

    ``model.prior`` and ``model.prior_components`` may differ: the prior is fitted after
    training (``fit_prior``), so a finished run can be resumed to try another prior
    without training again.
    """
    expected = {
        **{f"model.{k}": v for k, v in asdict(trainer.model.config).items() if k not in PRIOR_KEYS},
        **{f"training.{k}": getattr(trainer.config, k) for k in _must_match(trainer.config)},
        "seed": seed,
    }
    saved = {
        **{f"model.{k}": v for k, v in state["model_config"].items() if k not in PRIOR_KEYS},
        **{f"training.{k}": v for k, v in state["training"].items()},
        "seed": state["seed"],
    }
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, parameters {value!r}"
        for key, value in expected.items()
        if saved.get(key) != value
    ]
    if differences:
        raise ModelFileError(
            f"Cannot resume from {filepath}: it was written with other settings ({'; '.join(differences)}). "
            "Resume with the settings it was written with, or set training.resume=false to start over."
        )
    # the prior's buffers are not trained (fit_prior sets them): keep this run's
    prior = {k: v for k, v in trainer.model.state_dict().items() if k.startswith("prior_")}
    trainer.model.load_state_dict({**state["model"], **prior})
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step = state["step"]
    torch.set_rng_state(state["rng"]["torch"])
    generator.set_state(state["rng"]["shuffle"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def train_cvae(
    mnist_train: dict[str, torch.Tensor],
    mnist_test: dict[str, torch.Tensor],
    training_checkpoint: CheckpointStore | None,
    model_parameters: dict[str, Any],
    training_parameters: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Train the CVAE with Adam, reporting the test loss and saving a checkpoint after every epoch.

    Args:
        mnist_train: Training set, ``{"images", "labels"}``.
        mnist_test: Test set, same layout.
        training_checkpoint: Where to write a checkpoint after every epoch and, with
            ``resume``, to read the last one from; ``None`` for no checkpoints.
        model_parameters: The ``model`` parameters (a :class:`CVAEConfig`).
        training_parameters: The ``training`` parameters (a :class:`TrainingConfig`).
        seed: Seed of every random source (initial weights, shuffling, z samples).

    Returns:
        The trained model as ``{"config", "state_dict"}`` and the per-epoch history
        (``epoch``, ``train_*``/``test_*`` for loss, reconstruction and kl, ``seconds``).
    """
    model_config = parse_section(CVAEConfig, "model", model_parameters)
    config = parse_section(TrainingConfig, "training", training_parameters)
    seed = parse_seed(seed)
    generator = seed_everything(seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = select_device(config.device)
    trainer = Trainer.create(
        model_config,
        config,
        device,
        steps_per_epoch=math.ceil(len(mnist_train["labels"]) / config.batch_size),
    )
    history: dict[str, list[float]] = {"epoch": [], "seconds": []}
    if config.resume and training_checkpoint is not None and training_checkpoint.exists():
        state = training_checkpoint.read()
        _restore(state, trainer, generator, seed, training_checkpoint.filepath)
        history = state["history"]
        logger.info(
            "Resuming from %s after epoch %d of %d",
            training_checkpoint.filepath,
            state["epoch"],
            config.epochs,
        )
    logger.info(
        "Training on %s (%d threads, autocast %s, channels_last %s, compile %s)",
        device,
        torch.get_num_threads(),
        trainer.autocast_dtype,
        config.channels_last,
        config.compile,
    )
    train = {key: value.to(device) for key, value in mnist_train.items()}
    test = {key: value.to(device) for key, value in mnist_test.items()}

    for epoch in range(len(history["epoch"]) + 1, config.epochs + 1):
        started = time.perf_counter()
        try:
            train_terms = trainer.train_epoch(train, generator, epoch)
        except TrainingDivergedError as error:
            kept = (
                f" The checkpoint of epoch {epoch - 1} is kept in {training_checkpoint.filepath}."
                if epoch > 1 and training_checkpoint
                else ""
            )
            raise TrainingDivergedError(f"{error}{kept}") from None
        test_terms = trainer.test_epoch(test)
        history["epoch"].append(epoch)
        history["seconds"].append(time.perf_counter() - started)
        for split, terms in (("train", train_terms), ("test", test_terms)):
            for key, value in terms.items():
                history.setdefault(f"{split}_{key}", []).append(value)
        logger.info(
            "epoch %d/%d: train loss %.2f, test loss %.2f (%.1f s)",
            epoch,
            config.epochs,
            train_terms["loss"],
            test_terms["loss"],
            history["seconds"][-1],
        )
        if training_checkpoint is not None:
            training_checkpoint.write(_checkpoint_state(trainer, generator, epoch, history, seed))
    model = trainer.model.cpu().to(memory_format=torch.contiguous_format)
    return to_checkpoint(model), history


def fit_prior(
    trained_cvae: dict[str, Any],
    mnist_train: dict[str, torch.Tensor],
    training_parameters: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Fit the model's prior p(z | y) to the encoded training set when ``model.prior`` asks for it.

    With ``prior: fitted`` each class gets a mixture of ``prior_components`` Gaussians
    fitted to draws of its images' posteriors (:func:`cvae_mnist.prior.fit_class_prior`);
    with ``standard_normal`` the model is returned as it is. Every generator (evaluation, figures, the generation
    pipeline, the served model) samples from this prior.

    Args:
        trained_cvae: The model checkpoint from :func:`train_cvae`.
        mnist_train: Training set, ``{"images", "labels"}``.
        training_parameters: The ``training`` parameters (device, ``test_batch_size``).
        seed: Seed of the mixtures' initialisation.

    Returns:
        The checkpoint with the prior in its weights.
    """
    model = load_model(trained_cvae)
    if model.config.prior == "standard_normal":
        return trained_cvae
    config = parse_section(TrainingConfig, "training", training_parameters)
    images, labels = mnist_train["images"], mnist_train["labels"]
    mu, logvar = encode(model, images, labels, config.test_batch_size, select_device(config.device))
    try:
        fit_class_prior(model.cpu(), mu, logvar, labels, parse_seed(seed))
    except ValueError as error:
        raise DataError(f"Cannot fit the prior (model.prior = fitted): {error}.") from None
    logger.info(
        "Fitted p(z | y), %d Gaussians per class, to %d encoded training images",
        model.config.prior_components,
        len(labels),
    )
    return to_checkpoint(model)


def history_to_mlflow_metrics(training_history: dict[str, list[float]]) -> dict[str, list[dict[str, float]]]:
    """Turn the per-epoch history into metric histories (one step per epoch).

    Args:
        training_history: The output of :func:`train_cvae`.

    Returns:
        ``{metric: [{"step": epoch, "value": value}, ...]}`` for every series but ``epoch``.
    """
    epochs = training_history["epoch"]
    return {
        key: [{"step": int(step), "value": float(value)} for step, value in zip(epochs, values)]
        for key, values in training_history.items()
        if key != "epoch"
    }


def build_generator(cvae_model: dict[str, Any]) -> CVAEGenerator:
    """Wrap the trained model as an MLflow pyfunc model that generates digits on request.

    Args:
        cvae_model: The trained model checkpoint.

    Returns:
        The pyfunc model; the catalog logs it to the run (``cvae_generator``).
    """
    load_model(cvae_model)  # fail here, not at serving time, if the checkpoint is unusable
    return CVAEGenerator(cvae_model)
