"""The report's conditional VAE (Kingma et al. 2014, Sohn et al. 2015) for 28x28 digits.

Encoder q(z | x, y): the one-hot label is broadcast to ``num_classes`` extra input
channels, two stride-2 convolutions, then linear heads for ``mu`` and ``logvar``.
Decoder p(x | z, y): ``[z, one_hot(y)]`` through a linear layer and two stride-2
transposed convolutions to one channel of Bernoulli logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CVAEConfig:
    """Everything needed to rebuild a :class:`CVAE`; saved beside its weights."""

    image_size: int = 28  # height = width; must be divisible by 4 (two stride-2 convs)
    num_classes: int = 10  # size of the one-hot label
    latent_dim: int = 100  # size of z
    base_channels: int = 32  # channels of the first conv; the second has twice that


class CVAE(nn.Module):
    """Conditional VAE: ``forward(x, y)`` returns ``(logits, mu, logvar)``."""

    def __init__(self, config: CVAEConfig, label_lookup: bool = False) -> None:
        super().__init__()
        self.config = config
        self.label_lookup = label_lookup  # same function, computed faster; see encode()
        c, k = config.base_channels, config.num_classes
        self.feature_size = config.image_size // 4
        flat = 2 * c * self.feature_size**2
        self.encoder = nn.Sequential(
            nn.Conv2d(1 + k, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(flat, config.latent_dim)
        self.fc_logvar = nn.Linear(flat, config.latent_dim)
        self.decoder_input = nn.Linear(config.latent_dim + k, flat)
        self.decoder = nn.Sequential(
            nn.ReLU(),
            nn.Unflatten(1, (2 * c, self.feature_size, self.feature_size)),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),
        )

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.config.num_classes).to(self.fc_mu.weight.dtype)

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.label_lookup:
            y = self.one_hot(labels)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            h = self.encoder(torch.cat([x, y.to(x.dtype)], dim=1))
        else:
            # A convolution is linear in its input channels, and the label channels take
            # only num_classes values: convolve the image channel, then add the label
            # channels' response, computed once per class instead of once per image.
            conv = self.encoder[0]
            k = self.config.num_classes
            label_maps = torch.eye(k, device=x.device)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            per_class = F.conv2d(label_maps, conv.weight[:, 1:], None, conv.stride, conv.padding)
            h = F.conv2d(x, conv.weight[:, :1], conv.bias, conv.stride, conv.padding)
            # one-hot @ table picks each image's response (its backward is a GEMM, not a
            # scatter), laid out channels-last like the convolution's output
            table = per_class.permute(0, 2, 3, 1).flatten(1).to(h.dtype)
            rows = self.one_hot(labels).to(h.dtype) @ table
            h = h + rows.view(len(labels), *h.shape[2:], h.shape[1]).permute(0, 3, 1, 2)
            h = self.encoder[1:](h)
        return self.fc_mu(h), self.fc_logvar(h)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)  # the report used exp(logvar): the variance, not std
        return mu + std * torch.randn_like(std)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return Bernoulli logits of shape ``[N, 1, image_size, image_size]``."""
        return self.decoder(self.decoder_input(torch.cat([z, self.one_hot(labels)], dim=1)))

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, logvar), labels), mu, logvar


def to_checkpoint(model: CVAE) -> dict[str, Any]:
    """Return the model as plain data (config + weights) for ``torch.save``."""
    return {"config": asdict(model.config), "state_dict": model.state_dict()}


def from_checkpoint(checkpoint: dict[str, Any]) -> CVAE:
    """Rebuild a model saved by :func:`to_checkpoint`."""
    model = CVAE(CVAEConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
