"""Nodes of the reporting pipeline: the figures of a trained CVAE and of its training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from cvae_mnist.core.inference import decode, encode, generate
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.plotting import digit_grid_figure, figure_with_axes, name_columns, show_grid
from cvae_mnist.core.runtime import select_device
from cvae_mnist.core.schema import History, Split
from cvae_mnist.params import DIGITS, EvaluationParams, TrainingParams


def _first_of_each_class(labels: torch.Tensor, num_classes: int, count: int) -> torch.Tensor:
    """``[count, num_classes]`` indices: row r holds the r-th image of each class, -1 where
    a class has fewer."""
    index = torch.full((count, num_classes), -1, dtype=torch.long)
    for c in range(num_classes):
        found = torch.nonzero(labels == c).flatten()[:count]
        index[: len(found), c] = found
    return index


def plot_reconstructions(
    test_reconstructions: Split, mnist_test: Split, evaluation: EvaluationParams
) -> Figure:
    """The report's Figure 1: ``evaluation.images_per_class`` test digits of every class, one
    column per class, each above its reconstruction."""
    index = _first_of_each_class(mnist_test["labels"], DIGITS, evaluation.images_per_class)
    present = index >= 0
    real = torch.zeros(*index.shape, *mnist_test["images"].shape[1:])
    recon = torch.zeros_like(real)
    real[present] = mnist_test["images"][index[present]]
    recon[present] = test_reconstructions["images"][index[present]]
    pairs = torch.stack([real, recon], dim=1).flatten(0, 2)  # rows: real, recon, real, recon, ...
    figure, axis = figure_with_axes(figsize=(DIGITS * 0.7, len(index) * 1.4 + 0.6))
    show_grid(axis, pairs, DIGITS, "test digits (odd rows) above their reconstructions (even rows)")
    return figure


def plot_generated_digits(cvae_model: CVAE, evaluation: EvaluationParams, seed: int) -> Figure:
    """A grid of digits generated from the prior: one row per class, ``evaluation.generated_per_class``
    digits per row."""
    columns = evaluation.generated_per_class
    labels = torch.arange(cvae_model.config.num_classes).repeat_interleave(columns)
    images = generate(cvae_model, labels, seed, select_device(evaluation.device))
    prior = cvae_model.prior_config
    kind = prior.kind + (f" + {prior.pseudo_inputs} pseudo-inputs per class" if prior.pseudo_inputs else "")
    return digit_grid_figure(images, columns, f"generated from the prior ({kind}); row = requested digit")


def plot_latent_interpolation(cvae_model: CVAE, mnist_test: Split, evaluation: EvaluationParams) -> Figure:
    """Walks in latent space, one row per class: a test digit, the decoded points of the straight
    line between its posterior mean and that of another test digit of its class
    (``interpolation_steps`` of them, ends included), the other digit."""
    device, steps, batch = (
        select_device(evaluation.device),
        evaluation.interpolation_steps,
        evaluation.batch_size,
    )
    images, labels = mnist_test["images"], mnist_test["labels"]
    pairs = _first_of_each_class(labels, cvae_model.config.num_classes, 2)
    first, second = pairs[:, (pairs >= 0).all(0)]  # the classes with two test images
    mu_a, _ = encode(cvae_model, images[first], labels[first], batch, device)
    mu_b, _ = encode(cvae_model, images[second], labels[first], batch, device)
    weights = torch.linspace(0, 1, steps)[None, :, None]
    path = (1 - weights) * mu_a[:, None] + weights * mu_b[:, None]  # [rows, steps, latent]
    decoded = decode(cvae_model, path.flatten(0, 1), labels[first].repeat_interleave(steps), batch, device)
    decoded = torch.sigmoid(decoded).view(len(first), steps, *images.shape[1:])
    grid = torch.cat([images[first][:, None], decoded, images[second][:, None]], dim=1).flatten(0, 1)
    figure = digit_grid_figure(
        grid,
        steps + 2,
        "latent interpolation between two test digits of each class, decoded under their label",
    )
    name_columns(figure, ["test a", "mu(a)", *[""] * (steps - 2), "mu(b)", "test b"], images.shape[-1])
    return figure


def plot_label_swap(
    cvae_model: CVAE, mnist_test: Split, evaluation: EvaluationParams, label_swap_metrics: pd.DataFrame
) -> Figure:
    """One code decoded under each label: the style stays, the class changes. Each row: a test
    digit, then its posterior mean decoded under label 0, 1, ..., 9; a decoder that ignores the
    label repeats the test digit along its row. The title gives ``label_swap_accuracy``."""
    device, k = select_device(evaluation.device), cvae_model.config.num_classes
    index = _first_of_each_class(mnist_test["labels"], k, 1)[0]
    index = index[index >= 0]
    images, labels = mnist_test["images"][index], mnist_test["labels"][index]
    mu, _ = encode(cvae_model, images, labels, evaluation.batch_size, device)
    swapped = torch.arange(k).repeat(len(index))
    decoded = decode(cvae_model, mu.repeat_interleave(k, 0), swapped, evaluation.batch_size, device)
    decoded = torch.sigmoid(decoded).view(len(index), k, *images.shape[1:])
    grid = torch.cat([images[:, None], decoded], dim=1).flatten(0, 1)
    accuracy = float(label_swap_metrics["label_swap_accuracy"].iloc[0])
    figure = digit_grid_figure(
        grid,
        k + 1,
        "a test digit, then its code decoded under each label\n"
        f"(over the test set, {accuracy:.1%} of swapped decodes are read as the new label)",
    )
    name_columns(figure, ["test", *map(str, range(k))], images.shape[-1])
    return figure


def plot_worst_reconstructions(
    test_reconstructions: Split, mnist_test: Split, evaluation: EvaluationParams
) -> Figure:
    """The ``evaluation.worst_examples`` test digits reconstructed worst (highest BCE), each above
    its reconstruction and titled with its label and BCE in nats."""
    bce = test_reconstructions["bce"]
    worst = bce.argsort(descending=True)[: evaluation.worst_examples].tolist()
    figure, axes = figure_with_axes(2, len(worst), figsize=(len(worst) * 0.9 + 0.4, 2.6), squeeze=False)
    for column, i in enumerate(worst):
        for row, image in enumerate((mnist_test["images"][i, 0], test_reconstructions["images"][i, 0])):
            axes[row, column].imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, column].axis("off")
        axes[0, column].set_title(f"{mnist_test['labels'][i].item()}: {bce[i].item():.0f}", fontsize=8)
    figure.suptitle("worst-reconstructed test digits (label: BCE in nats); top real, bottom reconstruction")
    return figure


def plot_training_curves(training_history: History, training: TrainingParams) -> Figure:
    """The training objective and its two terms per epoch, training and test sets, one panel per
    term in nats per image; the loss, beta and schedule (``training``) named on the figure."""
    epochs = np.asarray(training_history["epoch"])
    figure, axes = figure_with_axes(1, 3, figsize=(12, 4))
    loss = training.loss.upper()
    titles = (
        f"objective: {loss} + {training.beta:g} x KL",
        f"reconstruction: {loss}",
        "KL(q(z | x, y) || N(0, I))",
    )
    for axis, term, title in zip(axes, ("loss", "reconstruction", "kl"), titles):
        for split, shown in (("train", "train (mean over the epoch)"), ("test", "test (after the epoch)")):
            axis.plot(epochs, training_history[f"{split}_{term}"], marker="o", label=shown)
        axis.set(title=title, xlabel="epoch", ylabel="nats per image")
        axis.grid(alpha=0.3)
    axes[0].legend()
    aids = training.swap_weight > 0 or training.adversary_weight > 0
    figure.suptitle(
        f"Learning rate {training.lr_schedule}, peak {training.lr:g}. Training values average an epoch in "
        "which the model changes\n(epoch 1 mixes the untrained start, KL near 0, with its end); test values "
        "score it at the epoch's end." + ("\nThe training objective also holds the label aids' losses "
        "(swap critic, adversary); the test objective does not." if aids else ""),
        fontsize=9,
    )  # fmt: skip
    return figure
