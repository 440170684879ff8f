"""The report's published model and training loop, as the benchmarks' reference.

``ReportCVAE`` is the report's ``nn_CVAE`` as published: the image and the one-hot label
broadcast to 10 channels, three stride-2 convolutions to 3x3, linear heads for ``mu`` and
``logvar``; a linear layer on ``[z, one_hot]``, three transposed convolutions back to 28x28
and a sigmoid; and its reparameterisation ``z = mu + eps * exp(logvar)`` (the variance where
the standard deviation belongs; the project's CVAE uses ``exp(0.5 * logvar)``).
:func:`report_epoch` trains it as the report did: a shuffling ``DataLoader`` over a
``TensorDataset``, fp32, ``binary_cross_entropy`` of the sigmoid output summed, plus the KL
divergence, Adam at 0.001, batch 128.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH_SIZE = 128
LR = 1e-3
EPOCHS = 10  # the report trained 10 epochs to its published row
REPORT_ROW = {"bce": 67.67, "mse": 6.45, "ssim": 0.915, "psnr": 21.50}  # its published test metrics


class ReportCVAE(nn.Module):
    def __init__(self, latent_dim: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = nn.Sequential(
            nn.Conv2d(1 + num_classes, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(), nn.Flatten(),
        )  # fmt: skip
        self.fc_mu = nn.Linear(128 * 3 * 3, latent_dim)
        self.fc_logvar = nn.Linear(128 * 3 * 3, latent_dim)
        self.fc_decode = nn.Linear(latent_dim + num_classes, 128 * 3 * 3)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 0), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Sigmoid(),
        )  # fmt: skip

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one_hot = F.one_hot(y, self.num_classes).float()
        h = self.encoder(torch.cat([x, one_hot[:, :, None, None].expand(-1, -1, 28, 28)], dim=1))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc_decode(torch.cat([z, F.one_hot(y, self.num_classes).float()], dim=1))
        return self.decoder(h.view(-1, 128, 3, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(logvar)  # as published
        return self.decode(z, y), mu, logvar


def report_training(
    train: dict[str, torch.Tensor],
) -> tuple[ReportCVAE, torch.optim.Optimizer, DataLoader]:
    """The model (seeded as the report, seed 1), its optimiser and its data loader."""
    torch.manual_seed(1)
    model = ReportCVAE()
    loader = DataLoader(TensorDataset(train["images"], train["labels"]), batch_size=BATCH_SIZE, shuffle=True)
    return model, torch.optim.Adam(model.parameters(), lr=LR), loader


def report_epoch(model: ReportCVAE, optimizer: torch.optim.Optimizer, loader: DataLoader) -> int:
    """One epoch of the report's loop; returns the images seen."""
    model.train()
    seen = 0
    for x, y in loader:
        recon, mu, logvar = model(x, y)
        bce = F.binary_cross_entropy(recon, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        optimizer.zero_grad()
        (bce + kld).backward()
        optimizer.step()
        seen += len(x)
    return seen


@torch.inference_mode()
def report_reconstructions(model: ReportCVAE, test: dict[str, torch.Tensor]) -> torch.Tensor:
    """Decoded posterior means of the test images, probabilities ``[N, 1, 28, 28]``."""
    model.eval()
    out = []
    for start in range(0, len(test["labels"]), 1000):
        x, y = test["images"][start : start + 1000], test["labels"][start : start + 1000]
        out.append(model.decode(model.encode(x, y)[0], y))
    return torch.cat(out)
