"""Figures of digit grids, shared by the evaluation and generation pipelines."""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torchvision.utils import make_grid


def figure_with_axes(rows: int = 1, columns: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure and its axes (``Figure.subplots``), made without pyplot: no global state, no
    window on any backend, nothing to close; it saves to a file and shows in Jupyter."""
    figure = Figure(figsize=kwargs.pop("figsize", None), layout="constrained")
    return figure, figure.subplots(rows, columns, **kwargs)


def show_grid(axis: Axes, images: torch.Tensor, columns: int, title: str) -> None:
    """Draw ``images`` (``[N, 1, H, W]`` in [0, 1]) as a grid with ``columns`` per row."""
    grid = make_grid(images, nrow=columns, padding=2, pad_value=1.0)
    axis.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1)
    axis.set_title(title)
    axis.axis("off")


def digit_grid_figure(images: torch.Tensor, columns: int, title: str) -> Figure:
    """A figure holding one grid of digits, sized to it."""
    rows = -(-len(images) // columns)
    figure, axis = figure_with_axes(figsize=(columns * 0.7 + 0.4, rows * 0.7 + 0.6))
    show_grid(axis, images, columns, title)
    return figure


def name_columns(figure: Figure, names: list[str], size: int) -> None:
    """Name each column of a :func:`digit_grid_figure` of ``size``-pixel digits below it."""
    (axis,) = figure.axes
    axis.axis("on")
    # make_grid puts 2 pixels of padding before each image
    axis.set_xticks([2 + (size + 2) * c + size / 2 for c in range(len(names))], names)
    axis.set_yticks([])
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
