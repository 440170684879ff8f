"""A conditional VAE (Kingma et al. 2014; Sohn et al. 2015) for 28x28 digits: a conv encoder
and decoder, both given the label (docs/architecture.md, layer sizes). No Kedro here."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cvae_mnist.core.prior import Prior, build_prior
from cvae_mnist.params import ModelParams, PriorParams

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


class FiLM(nn.Module):
    """``h * (1 + gamma(label)) + beta(label)`` per channel; starts as the identity."""

    def __init__(self, label_size: int, channels: int) -> None:
        super().__init__()
        self.project = nn.Linear(label_size, 2 * channels)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, h: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.project(label).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + gamma) + beta


class CVAE(nn.Module):
    """``forward(x, labels)`` returns ``(logits, mu, logvar)``; ``prior`` is p(z | y)."""

    def __init__(self, config: ModelParams, prior: PriorParams | None = None) -> None:
        super().__init__()
        self.config = config
        self.prior_config = prior or PriorParams(kind="standard_normal")
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
        # one FiLM after each ReLU of the decoder, keyed by the ReLU's name
        self.film = None
        if config.decoder_conditioning == "every_stage":
            channels, films = widths[-1], {}
            for name, layer in self.decoder.named_children():
                if isinstance(layer, nn.ConvTranspose2d):
                    channels = layer.out_channels
                elif isinstance(layer, nn.ReLU):
                    films[name] = FiLM(e, channels)
            self.film = nn.ModuleDict(films)
        self.prior: Prior = build_prior(self.prior_config, d, k)

    def with_prior(self, prior: PriorParams) -> CVAE:
        """This model with an unfitted prior of the kind ``prior`` describes (in place)."""
        self.prior_config = prior
        self.prior = build_prior(prior, self.config.latent_dim, self.config.num_classes)
        return self

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
        label = self.label(labels).to(z.dtype)
        h = self.decoder_input(torch.cat([z, label], dim=1))
        if self.film is None:
            return self.decoder(h)
        for name, layer in self.decoder.named_children():
            h = layer(h)
            if name in self.film:
                h = self.film[name](h, label)
        return h

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, logvar, noise), labels), mu, logvar
