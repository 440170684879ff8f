"""A conditional VAE (Kingma et al. 2014; Sohn et al. 2015) for 28x28 digits. No Kedro here.

Encoder q(z | x, y): the label (one-hot, or a learned embedding) broadcast to extra input
channels, stride-2 convolutions, then linear heads for ``mu`` and ``logvar``.
Decoder p(x | z, y): ``[z, label]`` through a linear layer and stride-2 transposed
convolutions to one channel of Bernoulli logits.
Prior p(z | y): a mixture of Gaussians per class held as buffers, N(0, I) until
:mod:`cvae_mnist.prior` fits it after training.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from cvae_mnist.params import ModelParams

# channels of each stride-2 stage (times base_channels), the decoder's transposed-conv
# paddings (deepest first), and whether batch norm and a ReLU follow the decoder's linear layer
ARCHITECTURES = {
    "two_stage": ((1, 2), (1, 1), True),  # 28 -> 14 -> 7 and back
    "report": ((1, 2, 4), (1, 0, 1), False),  # 28 -> 14 -> 7 -> 3, then 3 -> 6 -> 14 -> 28
}


class ConditionedConv2d(nn.Conv2d):
    """A convolution of the image with the label broadcast to extra input channels."""

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        maps = label[:, :, None, None].expand(-1, -1, *x.shape[-2:]).to(x.dtype)
        return super().forward(torch.cat([x, maps], dim=1))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, batch_norm: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else lambda _: nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), norm(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), norm(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def _stage(index: int, conv: nn.Conv2d | nn.ConvTranspose2d, batch_norm: bool, prefix: str = "") -> list:
    """``conv``, then batch norm if asked, then a ReLU, as named layers of a Sequential."""
    norm = [(f"{prefix}norm{index}", nn.BatchNorm2d(conv.out_channels))] if batch_norm else []
    return [(f"{prefix}conv{index}", conv), *norm, (f"{prefix}relu{index}", nn.ReLU())]


class CVAE(nn.Module):
    """``forward(x, labels)`` returns ``(logits, mu, logvar)``."""

    def __init__(self, config: ModelParams) -> None:
        super().__init__()
        self.config = config
        stages, paddings, activate_input = ARCHITECTURES[config.architecture]
        widths = [config.base_channels * s for s in stages]
        k, d, batch_norm = config.num_classes, config.latent_dim, config.normalization == "batch"
        embedded = config.conditioning == "embedding"
        self.embedding = nn.Embedding(k, config.embedding_dim) if embedded else None
        e = config.embedding_dim if embedded else k
        size = config.image_size // 2 ** len(stages)  # each 4x4 stride-2 convolution halves it, rounding down
        flat = widths[-1] * size * size

        def blocks() -> list:
            return [
                (f"block{i}", ResidualBlock(widths[-1], batch_norm)) for i in range(config.residual_blocks)
            ]

        encoder_blocks = blocks()
        self.conv1 = ConditionedConv2d(1 + e, widths[0], 4, stride=2, padding=1)
        encoder = [("relu1", nn.ReLU())]
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:]), start=2):
            encoder += _stage(i, nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), batch_norm)
        self.encoder = nn.Sequential(OrderedDict([*encoder, *encoder_blocks, ("flatten", nn.Flatten())]))
        self.fc_mu = nn.Linear(flat, d)
        self.fc_logvar = nn.Linear(flat, d)

        self.decoder_input = nn.Linear(d + e, flat)
        decoder = [("unflatten", nn.Unflatten(1, (widths[-1], size, size)))]
        if activate_input:
            decoder += [("norm0", nn.BatchNorm2d(widths[-1]))] if batch_norm else []
            decoder.append(("relu0", nn.ReLU()))
        decoder += blocks()
        ups = list(zip(reversed(widths), [*reversed(widths[:-1]), 1], paddings))
        for i, (c_in, c_out, padding) in enumerate(ups, start=1):
            up = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=padding)
            decoder += _stage(i, up, batch_norm, prefix="up") if i < len(ups) else [(f"upconv{i}", up)]
        self.decoder = nn.Sequential(OrderedDict(decoder))

        m = config.prior_components if config.prior == "fitted" else 1
        self.register_buffer("prior_weights", torch.full((k, m), 1 / m))
        self.register_buffer("prior_mean", torch.zeros(k, m, d))
        self.register_buffer("prior_scale_tril", torch.eye(d).repeat(k, m, 1, 1))

    def label(self, labels: torch.Tensor) -> torch.Tensor:
        """The label as the network sees it: one-hot or embedded, ``[N, e]``."""
        if self.embedding is not None:
            return self.embedding(labels)
        return F.one_hot(labels, self.config.num_classes).to(self.fc_mu.weight.dtype)

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self.conv1(x, self.label(labels)))
        return self.fc_mu(h), self.fc_logvar(h)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``z = mu + std * eps``, ``eps`` standard normal (``noise``, or drawn here)."""
        std = torch.exp(0.5 * logvar)  # the report's code used exp(logvar), the variance
        return mu + std * (torch.randn_like(std) if noise is None else noise)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of shape ``[N, 1, image_size, image_size]``."""
        return self.decoder(self.decoder_input(torch.cat([z, self.label(labels).to(z.dtype)], dim=1)))

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, logvar, noise), labels), mu, logvar

    def prior(self, labels: torch.Tensor) -> MixtureSameFamily:
        """p(z | y) of each label, a batch of Gaussian mixtures."""
        return MixtureSameFamily(
            Categorical(probs=self.prior_weights[labels], validate_args=False),
            MultivariateNormal(
                self.prior_mean[labels], scale_tril=self.prior_scale_tril[labels], validate_args=False
            ),
            validate_args=False,
        )

    def prior_sample(self, labels: torch.Tensor, noise: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """Draws of p(z | y) from standard normal ``noise`` ``[N, latent_dim]`` and ``uniform``
        ``[N]`` in [0, 1), which picks each draw's mixture component."""
        cumulative = self.prior_weights[labels].cumsum(dim=1)
        component = torch.searchsorted(cumulative, uniform[:, None]).clamp(max=cumulative.shape[1] - 1)[:, 0]
        scale = self.prior_scale_tril[labels, component]
        return self.prior_mean[labels, component] + (scale @ noise.unsqueeze(-1)).squeeze(-1)
