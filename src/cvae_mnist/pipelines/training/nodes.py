"""Nodes of the training pipeline: the training loop as a pure function of
(data, parameters) -> (model checkpoint, per-epoch history)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from cvae_mnist.config import TrainingConfig, parse_section, parse_seed
from cvae_mnist.errors import TrainingDivergedError
from cvae_mnist.losses import cvae_loss
from cvae_mnist.model import CVAE, CVAEConfig, to_checkpoint
from cvae_mnist.runtime import seed_everything, select_device

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "reconstruction", "kl")


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def _train_epoch(
    model: CVAE,
    optimizer: torch.optim.Optimizer,
    data: dict[str, torch.Tensor],
    config: TrainingConfig,
    generator: torch.Generator,
    epoch: int,
) -> dict[str, float]:
    model.train()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    n_batches = math.ceil(len(data["labels"]) / config.batch_size)
    progress = tqdm(
        _batches(len(data["labels"]), config.batch_size, generator),
        total=n_batches,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # keep logs of non-interactive runs short
    )
    for batch, index in enumerate(progress, start=1):
        x, y = data["images"][index], data["labels"][index]
        logits, mu, logvar = model(x, y)
        loss, recon, kl = cvae_loss(logits, x, mu, logvar, config.loss, config.beta, config.fused_bce)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"The training loss became {loss_value} at epoch {epoch}, batch {batch}. "
                f"The learning rate (training.lr = {config.lr}) is the likely cause: lower it."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in zip(LOSS_TERMS, (loss_value, recon.item(), kl.item())):
            sums[key] += value * len(index)
        if batch % 20 == 0:
            progress.set_postfix(loss=f"{loss_value:.2f}", refresh=False)
    return {key: total / len(data["labels"]) for key, total in sums.items()}


@torch.no_grad()
def _test_epoch(model: CVAE, data: dict[str, torch.Tensor], config: TrainingConfig) -> dict[str, float]:
    """The training objective on held-out data (one z sample per image, as in training)."""
    model.eval()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    for index in _batches(len(data["labels"]), config.test_batch_size, None):
        x, y = data["images"][index], data["labels"][index]
        logits, mu, logvar = model(x, y)
        terms = cvae_loss(logits, x, mu, logvar, config.loss, config.beta, config.fused_bce)
        for key, value in zip(LOSS_TERMS, terms):
            sums[key] += value.item() * len(index)
    return {key: total / len(data["labels"]) for key, total in sums.items()}


def train_cvae(
    mnist_train: dict[str, torch.Tensor],
    mnist_test: dict[str, torch.Tensor],
    model_parameters: dict[str, Any],
    training_parameters: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Train the CVAE with Adam, reporting the test loss after every epoch.

    Args:
        mnist_train: Training set, ``{"images", "labels"}``.
        mnist_test: Test set, same layout.
        model_parameters: The ``model`` parameters (a :class:`CVAEConfig`).
        training_parameters: The ``training`` parameters (a :class:`TrainingConfig`).
        seed: Seed of every random source (initial weights, shuffling, z samples).

    Returns:
        The trained model as ``{"config", "state_dict"}`` and the per-epoch history
        (``epoch``, ``train_*``/``test_*`` for loss, reconstruction and kl, ``seconds``).
    """
    model_config = parse_section(CVAEConfig, "model", model_parameters)
    config = parse_section(TrainingConfig, "training", training_parameters)
    generator = seed_everything(parse_seed(seed))
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = select_device(config.device)
    logger.info("Training on %s with %d threads", device, torch.get_num_threads())

    model = CVAE(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.momentum, 0.999))
    train = {key: value.to(device) for key, value in mnist_train.items()}
    test = {key: value.to(device) for key, value in mnist_test.items()}

    history: dict[str, list[float]] = {"epoch": [], "seconds": []}
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        train_terms = _train_epoch(model, optimizer, train, config, generator, epoch)
        test_terms = _test_epoch(model, test, config)
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
    return to_checkpoint(model.cpu()), history


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
