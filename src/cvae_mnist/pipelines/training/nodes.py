"""Nodes of the training pipeline: train the CVAE, fit its prior, hand on its history."""

from __future__ import annotations

import copy
import logging

from cvae_mnist.core.inference import encode
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.prior_fitting import fit_prior as fit_density
from cvae_mnist.core.runtime import select_device
from cvae_mnist.core.schema import History, Split
from cvae_mnist.engine.checkpoints import CheckpointStore
from cvae_mnist.engine.recipe import fit_cvae
from cvae_mnist.errors import DataError
from cvae_mnist.params import ModelParams, PriorParams, TrainingParams

logger = logging.getLogger(__name__)


def train_cvae(
    mnist_train: Split,
    mnist_test: Split,
    training_checkpoint: CheckpointStore,
    model: ModelParams,
    training: TrainingParams,
    seed: int,
) -> tuple[CVAE, History]:
    """Train the CVAE, scoring the test set and writing ``training_checkpoint`` after every epoch
    (and, with ``training.resume``, continuing from it); ``seed`` seeds every random source.

    Returns:
        The trained model (on the CPU, prior N(0, I) until :func:`fit_prior`) and its per-epoch
        history (``epoch``, ``seconds``, ``train_*`` and ``test_*`` of loss, reconstruction and kl).
    """
    return fit_cvae(model, mnist_train, mnist_test, training, seed, training_checkpoint)


def fit_prior(
    trained_cvae: CVAE, mnist_train: Split, prior: PriorParams, training: TrainingParams, seed: int
) -> tuple[CVAE, dict[str, list[dict[str, float]]]]:
    """Give the trained model its prior p(z | y), which every generator samples from: a
    ``mixture`` or ``flow`` fitted to draws of the training images' posteriors, blended with
    those of ``pseudo_inputs`` training images per class; a ``standard_normal`` alone needs no fit.

    Returns:
        The model with its prior, and the fit's curve as MLflow metric histories (``nll``: a
        flow's per epoch, a mixture's per class; empty for N(0, I)).
    """
    model = copy.deepcopy(trained_cvae).with_prior(prior)
    if prior.kind == "standard_normal" and prior.pseudo_inputs == 0:
        return model, {}
    images, labels = mnist_train["images"], mnist_train["labels"]
    device = select_device(training.device)
    mu, logvar = encode(model, images, labels, training.test_batch_size, device, "encoding the training set")
    try:
        curve = fit_density(model.prior.cpu(), mu, logvar, labels, prior, seed, device)
    except ValueError as error:
        raise DataError(f"Cannot fit the prior (prior.kind = {prior.kind}): {error}.") from None
    if curve:
        logger.info(
            "Fitted p(z | y) (%s) to %d encoded training images: %.2f nats per code",
            prior.kind, len(labels), curve[-1] if prior.kind == "flow" else sum(curve) / len(curve),
        )  # fmt: skip
    return model.cpu(), {"nll": [{"step": step, "value": value} for step, value in enumerate(curve, 1)]}


def build_generator(cvae_model: CVAE) -> CVAE:
    """The trained model, handed to ``cvae_generator``, which logs it to the MLflow run as the
    servable pyfunc model of ``cvae_mnist.glue.serving``."""
    return cvae_model
