"""Nodes of the evaluation pipeline: the report's metrics and figures."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from cvae_mnist.config import EvaluationConfig, parse_section, parse_seed
from cvae_mnist.inference import generate, likelihood_terms, load_model, reconstruct
from cvae_mnist.losses import reconstruction_loss
from cvae_mnist.metrics import mse_per_image, psnr_per_image, ssim_per_image
from cvae_mnist.plotting import digit_grid_figure, show_grid
from cvae_mnist.runtime import select_device

METRIC_COLUMNS = ("n_images", "bce_per_image", "mse_per_image", "ssim", "psnr")  # the report's, in its order
LIKELIHOOD_COLUMNS = ("kl_per_image", "neg_elbo_per_image", "iw_nll", "iw_samples")


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


def assemble_metrics(reconstruction_metrics: pd.DataFrame, likelihood_metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics table: the report's five columns first, then ours.

    Args:
        reconstruction_metrics: The output of :func:`evaluate_reconstructions`.
        likelihood_metrics: The output of :func:`evaluate_likelihood`.

    Returns:
        One row with all columns.
    """
    return pd.concat([reconstruction_metrics, likelihood_metrics], axis=1)


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
    return digit_grid_figure(images, columns, "generated from z ~ N(0, I); row = requested digit")


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
