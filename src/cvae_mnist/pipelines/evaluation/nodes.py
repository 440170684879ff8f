"""Nodes of the evaluation pipeline: the report's metrics and figures."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from cvae_mnist.classifier import DigitClassifier, frechet_distance, predict
from cvae_mnist.classifier import train_classifier as train_digit_classifier
from cvae_mnist.config import ClassifierConfig, EvaluationConfig, parse_section, parse_seed
from cvae_mnist.datasets import CheckpointStore
from cvae_mnist.inference import decode, encode, generate, likelihood_terms, load_model, reconstruct
from cvae_mnist.losses import reconstruction_loss
from cvae_mnist.metrics import mse_per_image, psnr_per_image, ssim_per_image
from cvae_mnist.plotting import digit_grid_figure, show_grid
from cvae_mnist.runtime import mixed_precision_dtype, select_device

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("n_images", "bce_per_image", "mse_per_image", "ssim", "psnr")  # the report's, in its order
LIKELIHOOD_COLUMNS = ("kl_per_image", "neg_elbo_per_image", "iw_nll", "iw_samples")
GENERATION_COLUMNS = ("cond_accuracy", "fid", "fid_reference", "classifier_accuracy")


def evaluate_reconstructions(
    cvae_model: dict[str, Any], mnist_test: dict[str, torch.Tensor], parameters: dict[str, Any]
) -> pd.DataFrame:
    """Compute the report's metrics over the whole test set.

    Each image is reconstructed from its posterior mean. BCE and MSE are summed over
    pixels, then averaged over images; SSIM and PSNR (scikit-image, ``data_range=1``)
    are computed per image, then averaged.

    Args:
        cvae_model: The trained model checkpoint.
        mnist_test: Test set, ``{"images", "labels"}``.
        parameters: The ``evaluation`` parameters.

    Returns:
        One row with the columns ``n_images, bce_per_image, mse_per_image, ssim, psnr``.
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    model = load_model(cvae_model)
    images, labels = mnist_test["images"], mnist_test["labels"]
    logits = reconstruct(model, images, labels, config.batch_size, select_device(config.device))
    bce = reconstruction_loss(logits, images, "bce").numpy()
    real = images[:, 0].numpy()
    recon = torch.sigmoid(logits)[:, 0].numpy()
    row = {
        "n_images": len(images),
        "bce_per_image": float(bce.mean()),
        "mse_per_image": float(mse_per_image(real, recon).mean()),
        "ssim": float(ssim_per_image(real, recon).mean()),
        "psnr": float(psnr_per_image(real, recon).mean()),
    }
    return pd.DataFrame([row], columns=list(METRIC_COLUMNS))


def evaluate_likelihood(
    cvae_model: dict[str, Any], mnist_test: dict[str, torch.Tensor], parameters: dict[str, Any], seed: int
) -> pd.DataFrame:
    """Likelihood metrics over the whole test set, in nats per image.

    Args:
        cvae_model: The trained model checkpoint.
        mnist_test: Test set, ``{"images", "labels"}``.
        parameters: The ``evaluation`` parameters (``iw_samples``: K draws per image).
        seed: Seed of the draws of z.

    Returns:
        One row: ``kl_per_image`` (analytic), ``neg_elbo_per_image`` (reconstruction
        averaged over the K draws + KL, beta = 1), ``iw_nll`` (importance-weighted
        estimate of -log p(x | y) with K draws) and ``iw_samples`` (K).
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    terms = likelihood_terms(
        load_model(cvae_model),
        mnist_test["images"],
        mnist_test["labels"],
        config.iw_samples,
        config.batch_size,
        select_device(config.device),
        parse_seed(seed),
    )
    row = {
        "kl_per_image": float(terms["kl"].mean()),
        "neg_elbo_per_image": float(terms["neg_elbo"].mean()),
        "iw_nll": float(terms["iw_nll"].mean()),
        "iw_samples": config.iw_samples,
    }
    return pd.DataFrame([row], columns=list(LIKELIHOOD_COLUMNS))


def get_digit_classifier(
    digit_classifier: CheckpointStore,
    mnist_train: dict[str, torch.Tensor],
    mnist_test: dict[str, torch.Tensor],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """The digit classifier: the saved one if it was trained with these settings and as many
    training images, else a new one.

    It has its own seed (``classifier.seed``), so runs with another top-level ``seed`` are
    judged by the same classifier instead of retraining (and replacing) it.

    Args:
        digit_classifier: Where the classifier is kept.
        mnist_train: Training set it learns from.
        mnist_test: Test set it is scored on.
        parameters: The ``classifier`` parameters, with the seed of its weights and shuffling.

    Returns:
        ``{"config", "state_dict", "test_accuracy"}``.
    """
    config = {
        **asdict(parse_section(ClassifierConfig, "classifier", parameters)),
        "n_train": len(mnist_train["labels"]),  # a smoke run's classifier is not reused by a full run
    }
    if digit_classifier.exists():
        saved = digit_classifier.read()
        if saved.get("config") == config:
            logger.info("Reusing the digit classifier in %s", digit_classifier.filepath)
            return saved
    generator = torch.Generator().manual_seed(config["seed"])
    torch.manual_seed(config["seed"])
    model = train_digit_classifier(
        mnist_train["images"],
        mnist_train["labels"],
        config["epochs"],
        config["batch_size"],
        config["lr"],
        generator,
        mixed_precision_dtype(torch.device("cpu")),
    )
    predicted, _ = predict(model, mnist_test["images"])
    accuracy = float((predicted == mnist_test["labels"]).float().mean())
    logger.info("Digit classifier trained: %.2f%% accuracy on the test set", 100 * accuracy)
    saved = {"config": config, "state_dict": model.state_dict(), "test_accuracy": accuracy}
    digit_classifier.write(saved)
    return saved


def evaluate_generation(
    cvae_model: dict[str, Any],
    classifier: dict[str, Any],
    mnist_train: dict[str, torch.Tensor],
    mnist_test: dict[str, torch.Tensor],
    parameters: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """How well the model generates the digit asked for, and how real its digits look.

    ``samples_per_class`` digits per class are generated through ``inference.generate``
    (the path every generator in the project takes) and judged by the digit classifier.

    Args:
        cvae_model: The trained model checkpoint.
        classifier: The digit classifier (``get_digit_classifier``).
        mnist_train: Training set (its first test-set-sized slice is the FID reference).
        mnist_test: Test set.
        parameters: The ``evaluation`` parameters.
        seed: Seed of the latent samples.

    Returns:
        One row: ``cond_accuracy`` (share classified as the requested digit), ``fid``
        (Fréchet distance of the classifier's features, generated vs test images),
        ``fid_reference`` (the same, training vs test images: the floor) and
        ``classifier_accuracy`` (the classifier's test-set accuracy).
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    model = load_model(cvae_model)
    judge = DigitClassifier()
    judge.load_state_dict(classifier["state_dict"])
    requested = torch.arange(model.config.num_classes).repeat_interleave(config.samples_per_class)
    generated = generate(model, requested, parse_seed(seed), select_device(config.device))
    predicted, generated_features = predict(judge, generated)
    _, test_features = predict(judge, mnist_test["images"])
    _, train_features = predict(judge, mnist_train["images"][: len(mnist_test["images"])])
    row = {
        "cond_accuracy": float((predicted == requested).float().mean()),
        "fid": frechet_distance(generated_features.numpy(), test_features.numpy()),
        "fid_reference": frechet_distance(train_features.numpy(), test_features.numpy()),
        "classifier_accuracy": classifier["test_accuracy"],
    }
    return pd.DataFrame([row], columns=list(GENERATION_COLUMNS))


def assemble_metrics(*tables: pd.DataFrame) -> pd.DataFrame:
    """The metrics table: the report's five columns first, then ours.

    Args:
        *tables: One-row tables: reconstruction, likelihood and generation metrics.

    Returns:
        One row with all columns.
    """
    return pd.concat(tables, axis=1)


def metrics_to_mlflow(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Turn the metrics table's single row into MLflow metrics (step 0).

    Args:
        metrics: The output of :func:`evaluate_reconstructions`.

    Returns:
        ``{column: {"step": 0, "value": value}}``.
    """
    (row,) = metrics.to_dict(orient="records")
    return {key: {"step": 0, "value": float(value)} for key, value in row.items()}


def _examples_by_row(labels: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    """Indices laid out as ``[per_class, num_classes]``: row r holds the r-th example of
    each class, or -1 where a class has fewer examples."""
    index = torch.full((per_class, num_classes), -1, dtype=torch.long)
    for c in range(num_classes):
        found = torch.nonzero(labels == c).flatten()[:per_class]
        index[: len(found), c] = found
    return index


def plot_reconstructions(
    cvae_model: dict[str, Any], mnist_test: dict[str, torch.Tensor], parameters: dict[str, Any]
) -> Figure:
    """The report's Figure 1: test digits of every class, each above its reconstruction.

    Args:
        cvae_model: The trained model checkpoint.
        mnist_test: Test set, ``{"images", "labels"}``.
        parameters: The ``evaluation`` parameters (``images_per_class`` pairs per class).

    Returns:
        A figure with one column per class and alternating rows: real, reconstructed.
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    model = load_model(cvae_model)
    num_classes = model.config.num_classes
    index = _examples_by_row(mnist_test["labels"], config.images_per_class, num_classes)
    present = index >= 0
    real = torch.zeros(*index.shape, *mnist_test["images"].shape[1:])
    real[present] = mnist_test["images"][index[present]]
    recon = torch.zeros_like(real)
    recon[present] = torch.sigmoid(
        reconstruct(
            model,
            real[present],
            mnist_test["labels"][index[present]],
            config.batch_size,
            select_device(config.device),
        )
    )
    pairs = torch.stack([real, recon], dim=1).flatten(0, 2)  # rows: real, recon, real, recon, ...
    figure, axis = plt.subplots(figsize=(num_classes * 0.7, len(index) * 1.4 + 0.6), layout="constrained")
    show_grid(axis, pairs, num_classes, "test digits (odd rows) above their reconstructions (even rows)")
    return figure


def plot_generated_digits(cvae_model: dict[str, Any], parameters: dict[str, Any], seed: int) -> Figure:
    """A grid of digits generated from the prior: one row per class.

    Args:
        cvae_model: The trained model checkpoint.
        parameters: The ``evaluation`` parameters (``generated_per_class`` digits per row).
        seed: Seed of the latent samples.

    Returns:
        The figure.
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    model = load_model(cvae_model)
    columns = config.generated_per_class
    labels = torch.arange(model.config.num_classes).repeat_interleave(columns)
    images = generate(model, labels, parse_seed(seed), select_device(config.device))
    return digit_grid_figure(
        images, columns, f"generated from the prior ({model.config.prior}); row = requested digit"
    )


def _first_of_each_class(labels: torch.Tensor, num_classes: int, skip: int = 0) -> torch.Tensor:
    """Index of the ``skip``-th test image of each class (classes without one are left out)."""
    found = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    return torch.stack([f[skip] for f in found if len(f) > skip])


def plot_latent_interpolation(
    cvae_model: dict[str, Any], mnist_test: dict[str, torch.Tensor], parameters: dict[str, Any]
) -> Figure:
    """Walk in latent space between two test digits of the same class, one row per class.

    Each row: the first test digit, the decoded points of the straight line between the
    two digits' posterior means (``interpolation_steps`` of them, ends included), the
    second test digit.

    Args:
        cvae_model: The trained model checkpoint.
        mnist_test: Test set, ``{"images", "labels"}``.
        parameters: The ``evaluation`` parameters.

    Returns:
        The figure.
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    model = load_model(cvae_model)
    device = select_device(config.device)
    images, labels = mnist_test["images"], mnist_test["labels"]
    first = _first_of_each_class(labels, model.config.num_classes)
    second = _first_of_each_class(labels, model.config.num_classes, skip=1)
    rows = min(len(first), len(second))
    first, second = first[:rows], second[:rows]
    row_labels = labels[first]
    mu_a, _ = encode(model, images[first], row_labels, config.batch_size, device)
    mu_b, _ = encode(model, images[second], row_labels, config.batch_size, device)
    weights = torch.linspace(0, 1, config.interpolation_steps)[None, :, None]
    path = (1 - weights) * mu_a[:, None] + weights * mu_b[:, None]  # [rows, steps, latent]
    steps = config.interpolation_steps
    decoded = torch.sigmoid(
        decode(model, path.flatten(0, 1), row_labels.repeat_interleave(steps), config.batch_size, device)
    ).view(rows, steps, *images.shape[1:])
    grid = torch.cat([images[first][:, None], decoded, images[second][:, None]], dim=1).flatten(0, 1)
    return digit_grid_figure(grid, steps + 2, "latent interpolation: test digit, decoded path, test digit")


def plot_label_swap(
    cvae_model: dict[str, Any], mnist_test: dict[str, torch.Tensor], parameters: dict[str, Any]
) -> Figure:
    """One latent vector decoded under each of the labels: the style stays, the class changes.

    Each row: a test digit, then its posterior mean decoded under label 0, 1, ..., 9.

    Args:
        cvae_model: The trained model checkpoint.
        mnist_test: Test set, ``{"images", "labels"}``.
        parameters: The ``evaluation`` parameters.

    Returns:
        The figure.
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    model = load_model(cvae_model)
    device = select_device(config.device)
    k = model.config.num_classes
    index = _first_of_each_class(mnist_test["labels"], k)
    images, labels = mnist_test["images"][index], mnist_test["labels"][index]
    mu, _ = encode(model, images, labels, config.batch_size, device)
    decoded = torch.sigmoid(
        decode(
            model, mu.repeat_interleave(k, 0), torch.arange(k).repeat(len(index)), config.batch_size, device
        )
    ).view(len(index), k, *images.shape[1:])
    grid = torch.cat([images[:, None], decoded], dim=1).flatten(0, 1)
    return digit_grid_figure(grid, k + 1, "test digit, then its latent vector decoded under labels 0-9")


def plot_worst_reconstructions(
    cvae_model: dict[str, Any], mnist_test: dict[str, torch.Tensor], parameters: dict[str, Any]
) -> Figure:
    """The test digits the model reconstructs worst (highest BCE), each above its reconstruction.

    Args:
        cvae_model: The trained model checkpoint.
        mnist_test: Test set, ``{"images", "labels"}``.
        parameters: The ``evaluation`` parameters (``worst_examples`` digits).

    Returns:
        The figure; each digit's title is its label and BCE in nats.
    """
    config = parse_section(EvaluationConfig, "evaluation", parameters)
    model = load_model(cvae_model)
    images, labels = mnist_test["images"], mnist_test["labels"]
    logits = reconstruct(model, images, labels, config.batch_size, select_device(config.device))
    bce = reconstruction_loss(logits, images, "bce")
    worst = bce.argsort(descending=True)[: config.worst_examples]
    figure, axes = plt.subplots(
        2, len(worst), figsize=(len(worst) * 0.9 + 0.4, 2.6), layout="constrained", squeeze=False
    )
    for column, i in enumerate(worst.tolist()):
        for row, image in enumerate((images[i, 0], torch.sigmoid(logits[i, 0]))):
            axis = axes[row, column]
            axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axis.axis("off")
        axes[0, column].set_title(f"{labels[i].item()}: {bce[i].item():.0f}", fontsize=8)
    figure.suptitle("worst-reconstructed test digits (label: BCE in nats); top real, bottom reconstruction")
    return figure


def plot_training_curves(training_history: dict[str, list[float]]) -> Figure:
    """Train and test loss, reconstruction and KL per epoch.

    Args:
        training_history: The training pipeline's per-epoch history.

    Returns:
        The figure, one panel per term.
    """
    epochs = np.asarray(training_history["epoch"])
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5), layout="constrained")
    for axis, term, title in zip(
        axes, ("loss", "reconstruction", "kl"), ("loss (negative ELBO at beta=1)", "reconstruction", "KL")
    ):
        for split in ("train", "test"):
            axis.plot(epochs, training_history[f"{split}_{term}"], marker="o", label=split)
        axis.set_title(f"{title}, nats per image")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    return figure
