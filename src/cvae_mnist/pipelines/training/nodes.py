"""Nodes of the training pipeline: train the CVAE, fit its prior, hand on its history."""

from __future__ import annotations

import copy
import logging

from cvae_mnist.datasets import CheckpointStore
from cvae_mnist.errors import DataError
from cvae_mnist.inference import encode
from cvae_mnist.model import CVAE
from cvae_mnist.params import ModelParams, TrainingParams
from cvae_mnist.prior import fit_class_prior
from cvae_mnist.runtime import select_device
from cvae_mnist.training import History, Split
from cvae_mnist.training import train_cvae as train

logger = logging.getLogger(__name__)


def train_cvae(
    mnist_train: Split,
    mnist_test: Split,
    training_checkpoint: CheckpointStore,
    model: ModelParams,
    training: TrainingParams,
    seed: int,
) -> tuple[CVAE, History]:
    """Train the CVAE, scoring the test set and writing a checkpoint after every epoch.

    Args:
        mnist_train: Training set, ``{"images", "labels"}``.
        mnist_test: Test set, same layout.
        training_checkpoint: Where the checkpoint is written and, with ``training.resume``,
            read from.
        model: The ``model`` parameters.
        training: The ``training`` parameters.
        seed: Seed of every random source (initial weights, shuffling, z samples).

    Returns:
        The trained model (on the CPU, prior N(0, I)) and its per-epoch history
        (``epoch``, ``seconds``, ``train_*`` and ``test_*`` of loss, reconstruction and kl).
    """
    return train(model, mnist_train, mnist_test, training, seed, training_checkpoint)


def fit_prior(trained_cvae: CVAE, mnist_train: Split, training: TrainingParams, seed: int) -> CVAE:
    """Fit p(z | y) to the encoded training set when ``model.prior`` is ``fitted``.

    Each class gets a mixture of ``model.prior_components`` Gaussians fitted to draws of
    its images' posteriors (:func:`cvae_mnist.prior.fit_class_prior`); a ``standard_normal``
    model is returned as it is. Every generator samples from this prior.

    Args:
        trained_cvae: The trained model.
        mnist_train: Training set, ``{"images", "labels"}``.
        training: The ``training`` parameters (device, ``test_batch_size``).
        seed: Seed of the draws and of the mixtures' initialisation.

    Returns:
        The model with its prior.
    """
    if trained_cvae.config.prior == "standard_normal":
        return trained_cvae
    model = copy.deepcopy(trained_cvae)
    images, labels = mnist_train["images"], mnist_train["labels"]
    device = select_device(training.device)
    mu, logvar = encode(model, images, labels, training.test_batch_size, device, "encoding the training set")
    try:
        fit_class_prior(model.cpu(), mu, logvar, labels, seed)
    except ValueError as error:
        raise DataError(f"Cannot fit the prior (model.prior = fitted): {error}.") from None
    logger.info(
        "Fitted p(z | y), %d Gaussians per class, to %d encoded training images",
        model.config.prior_components,
        len(labels),
    )
    return model


def history_to_mlflow_metrics(training_history: History) -> dict[str, list[dict[str, float]]]:
    """Turn the per-epoch history into MLflow metric histories, one step per epoch.

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


def build_generator(cvae_model: CVAE) -> CVAE:
    """Hand the trained model to ``cvae_generator``, which logs it to the MLflow run as the
    servable pyfunc model of ``cvae_mnist.serving``.

    Args:
        cvae_model: The trained model, with its prior.

    Returns:
        The same model.
    """
    return cvae_model
