"""A small CNN digit classifier: the judge of generated digits (conditional accuracy)
and the feature extractor of the Fréchet distance (FID on its penultimate layer)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class DigitClassifier(nn.Module):
    """Two 3x3 conv blocks with max pooling, a 128-unit feature layer, 10 logits."""

    def __init__(self, features: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, features),
            nn.ReLU(),
        )
        self.head = nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.inference_mode()
def predict(
    model: DigitClassifier, images: torch.Tensor, batch_size: int = 1000, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(predicted labels, penultimate features)`` for images ``[N, 1, 28, 28]``, on
    the CPU, computed on ``device`` (the model's own when None)."""
    device = device or next(model.parameters()).device
    with torch.inference_mode(False):  # moved parameters stay ordinary tensors
        model.eval().to(device)
    labels, features = [], []
    for start in range(0, len(images), batch_size):
        h = model.features(images[start : start + batch_size].to(device))
        features.append(h.float().cpu())
        labels.append(model.head(h).argmax(1).cpu())
    return torch.cat(labels), torch.cat(features)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]``:
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (Heusel et al. 2017).

    ``Tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of the symmetric
    ``S_a^(1/2) S_b S_a^(1/2)``, computed with ``eigh``: exact for singular covariances too
    (rank-deficient features), where a general matrix square root is unstable."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    product = np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(product).sum())
