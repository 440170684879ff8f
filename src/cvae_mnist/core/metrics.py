"""Per-image metrics on images in [0, 1]: reconstruction quality (arrays ``[N, H, W]``) and
how close generated digits come to the training digits (tensors)."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

# PSNR is infinite for a perfect reconstruction; we cap it so means stay finite.
# 100 dB is a squared error of 1e-10 per pixel, far below 8-bit quantisation.
PSNR_CAP_DB = 100.0


def mse_per_image(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Squared error summed over each image's pixels."""
    diff = reconstructions.astype(np.float64) - images.astype(np.float64)
    return (diff**2).reshape(len(images), -1).sum(axis=1)


def ssim_per_image(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Structural similarity of each image (scikit-image's defaults, ``data_range=1``)."""
    return np.array(
        [
            structural_similarity(image, recon, data_range=1.0)
            for image, recon in zip(images.astype(np.float64), reconstructions.astype(np.float64))
        ]
    )


def psnr_per_image(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio of each image in dB (``data_range=1``), capped at
    :data:`PSNR_CAP_DB`."""
    images = images.astype(np.float64)
    reconstructions = reconstructions.astype(np.float64)
    with np.errstate(divide="ignore"):
        values = [
            peak_signal_noise_ratio(image, recon, data_range=1.0)
            if not np.array_equal(image, recon)
            else np.inf
            for image, recon in zip(images, reconstructions)
        ]
    return np.minimum(np.array(values), PSNR_CAP_DB)


def nearest_distances(images: torch.Tensor, reference: torch.Tensor, chunk: int = 250) -> torch.Tensor:
    """Each image's Euclidean distance to its nearest image in ``reference`` (same device):
    a generator that replays its training digits gives distances far below those of new
    real digits."""
    flat = reference.flatten(1).float()
    return torch.cat([torch.cdist(part.flatten(1).float(), flat).amin(1) for part in images.split(chunk)])
