"""Data augmentation of training images: small random rotations and shifts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cvae_mnist.core.runtime import World


def random_affine(
    images: torch.Tensor,
    max_rotation: float,
    max_shift: float,
    generator: torch.Generator,
    world: World = World(),
) -> torch.Tensor:
    """Rotate and shift each image of ``[N, C, H, W]`` by its own random amount.

    Angles are uniform in ``[-max_rotation, max_rotation]`` degrees and shifts uniform in
    ``[-max_shift, max_shift]`` pixels along each axis, drawn from ``generator`` (on the
    CPU, so a seed gives the same images on every device). Pixels moved in from outside
    are 0 (background). One batched ``grid_sample`` call, not a Python loop per image.
    With several processes, ``images`` is this rank's share of a global batch: the amounts
    are drawn for the global batch and the rank takes its share of them.
    """
    if max_rotation == 0 and max_shift == 0:
        return images
    n, _, height, width = images.shape
    angle = world.share(
        (2 * torch.rand(n * world.size, generator=generator) - 1) * math.radians(max_rotation)
    )
    shift = world.share((2 * torch.rand(n * world.size, 2, generator=generator) - 1) * max_shift)
    cos, sin = angle.cos(), angle.sin()
    # affine_grid works in [-1, 1] coordinates: a pixel is 2 / size of them
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shift[:, 0] * 2 / width], dim=1),
            torch.stack([sin, cos, shift[:, 1] * 2 / height], dim=1),
        ],
        dim=1,
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
