"""Nodes of the generation pipeline."""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure

from cvae_mnist.core.inference import generate
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.plotting import digit_grid_figure
from cvae_mnist.core.runtime import select_device
from cvae_mnist.params import GenerationParams


def generate_digits(cvae_model: CVAE, generation: GenerationParams) -> dict[str, Any]:
    """``generation.n_samples`` prior samples decoded for ``generation.digit`` (null: every digit):
    ``{"images": float32 [N, 28, 28] in [0, 1], "labels": int64 [N], "seed": int}``."""
    digits = (
        [generation.digit] if generation.digit is not None else list(range(cvae_model.config.num_classes))
    )
    labels = torch.tensor(digits).repeat_interleave(generation.n_samples)
    images = generate(cvae_model, labels, generation.seed, select_device(generation.device))
    return {"images": images[:, 0], "labels": labels, "seed": generation.seed}


def plot_generated(generated_digits: dict[str, Any]) -> Figure:
    """One row per requested digit, or a block of rows for a single digit."""
    labels = generated_digits["labels"]
    digits = labels.unique().tolist()
    per_digit = len(labels) // len(digits)
    columns = per_digit if len(digits) > 1 else min(per_digit, 8)
    title = f"digit{'s' if len(digits) > 1 else ''} {', '.join(map(str, digits))}, seed {generated_digits['seed']}"
    return digit_grid_figure(generated_digits["images"].unsqueeze(1), columns, title)
