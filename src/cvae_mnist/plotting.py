"""Figures of digit grids, shared by the evaluation and generation pipelines."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid


def show_grid(axis: plt.Axes, images: torch.Tensor, columns: int, title: str) -> None:
    """Draw ``images`` (``[N, 1, H, W]`` in [0, 1]) as a grid with ``columns`` per row."""
    grid = make_grid(images, nrow=columns, padding=2, pad_value=1.0)
    axis.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1)
    axis.set_title(title)
    axis.axis("off")


def digit_grid_figure(images: torch.Tensor, columns: int, title: str) -> Figure:
    """A figure holding one grid of digits, sized to it."""
    rows = -(-len(images) // columns)
    figure, axis = plt.subplots(figsize=(columns * 0.7 + 0.4, rows * 0.7 + 0.6), layout="constrained")
    show_grid(axis, images, columns, title)
    return figure
