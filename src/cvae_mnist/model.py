"""A conditional VAE (Kingma et al. 2014, Sohn et al. 2015) for 28x28 digits.

Encoder q(z | x, y): the label (one-hot, or a learned embedding) is broadcast to extra
input channels, two stride-2 convolutions (optionally batch-normalised and followed by
residual blocks), then linear heads for ``mu`` and ``logvar``.
Decoder p(x | z, y): ``[z, label]`` through a linear layer, the same residual blocks,
and two stride-2 transposed convolutions to one channel of Bernoulli logits.
Prior p(z | y): a mixture of Gaussians per class (weights, means and Cholesky factors
held as buffers), ``N(0, I)`` for every class unless ``cvae_mnist.prior`` fits it.
With the defaults of :class:`CVAEConfig` this is exactly the report's model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from cvae_mnist.fastpath import FlattenKeepLayout, label_conv, strided_conv4x4, subpixel_conv_transpose2d


@dataclass(frozen=True)
class CVAEConfig:
    """Everything needed to rebuild a :class:`CVAE`; saved beside its weights."""

    image_size: int = 28  # height = width; must be divisible by 4 (two stride-2 convs)
    num_classes: int = 10
    latent_dim: int = 100  # size of z
    base_channels: int = 32  # channels of the first conv; the second has twice that
    conditioning: str = "one_hot"  # label as a one-hot vector or a learned "embedding"
    embedding_dim: int = 16  # size of the learned label embedding
    normalization: str = "none"  # "none" or "batch" (batch norm after the inner convs)
    residual_blocks: int = 0  # 3x3 residual blocks at the 1/4 resolution, in each of encoder and decoder
    prior: str = "standard_normal"  # or "fitted": a Gaussian mixture per class, see cvae_mnist.prior
    prior_components: int = 5  # Gaussians in each class's mixture when prior = "fitted"


class _Strided4x4:
    """A 4x4, stride-2, padding-1 (transposed) convolution; ``gemm_weight_grad`` computes the
    same function with :func:`cvae_mnist.fastpath.strided_conv4x4` (same parameters and state_dict)."""

    gemm_weight_grad = False

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return strided_conv4x4(x, self) if self.gemm_weight_grad else super().forward(x)


class Conv4x4(_Strided4x4, nn.Conv2d):
    """``nn.Conv2d(in, out, 4, stride=2, padding=1)``, see :class:`_Strided4x4`."""


class ConvTranspose4x4(_Strided4x4, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(in, out, 4, stride=2, padding=1)``, see :class:`_Strided4x4`."""


class ResidualBlock(nn.Sequential):
    def __init__(self, channels: int, norm: type[nn.Module]) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1), norm(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), norm(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + super().forward(x))


class CVAE(nn.Module):
    """Conditional VAE: ``forward(x, y)`` returns ``(logits, mu, logvar)``.

    ``label_lookup``, ``channels_last``, ``subpixel_output`` and ``gemm_weight_grads``
    compute the same function faster (:mod:`cvae_mnist.fastpath`); the weights and
    checkpoints are the same.
    """

    def __init__(
        self,
        config: CVAEConfig,
        label_lookup: bool = False,
        channels_last: bool = False,
        subpixel_output: bool = False,
        gemm_weight_grads: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.label_lookup, self.channels_last, self.subpixel_output = (
            label_lookup,
            channels_last,
            subpixel_output,
        )
        c, k, d = config.base_channels, config.num_classes, config.latent_dim
        self.embedding = nn.Embedding(k, config.embedding_dim) if config.conditioning == "embedding" else None
        e = config.embedding_dim if self.embedding is not None else k
        norm = nn.BatchNorm2d if config.normalization == "batch" else lambda _: nn.Identity()
        blocks = [ResidualBlock(2 * c, norm) for _ in range(config.residual_blocks)]
        self.feature_size = config.image_size // 4
        flat = 2 * c * self.feature_size**2
        encoder = [nn.Conv2d(1 + e, c, 4, stride=2, padding=1), nn.ReLU(), Conv4x4(c, 2 * c)]
        self.encoder = nn.Sequential(*encoder, *_drop(norm(2 * c)), nn.ReLU(), *blocks, FlattenKeepLayout())
        self.fc_mu = nn.Linear(flat, d)
        self.fc_logvar = nn.Linear(flat, d)
        self.decoder_input = nn.Linear(d + e, flat)
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (2 * c, self.feature_size, self.feature_size)), *_drop(norm(2 * c)), nn.ReLU(),
            *[ResidualBlock(2 * c, norm) for _ in range(config.residual_blocks)],
            ConvTranspose4x4(2 * c, c), *_drop(norm(c)), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),
        )  # fmt: skip
        m = config.prior_components if config.prior == "fitted" else 1
        self.register_buffer("prior_weights", torch.full((k, m), 1 / m))
        self.register_buffer("prior_mean", torch.zeros(k, m, d))
        self.register_buffer("prior_scale_tril", torch.eye(d).repeat(k, m, 1, 1))
        for layer in self.modules():
            if isinstance(layer, _Strided4x4):
                layer.gemm_weight_grad = gemm_weight_grads
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def label(self, labels: torch.Tensor) -> torch.Tensor:
        """The label as the network sees it: one-hot or embedded, ``[N, e]``."""
        if self.embedding is not None:
            return self.embedding(labels)
        return F.one_hot(labels, self.config.num_classes).to(self.fc_mu.weight.dtype)

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.label_lookup:
            classes = self.label(torch.arange(self.config.num_classes, device=x.device))
            h = label_conv(self.encoder[0], x, classes, labels)
        else:
            y = self.label(labels)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            h = self.encoder[0](torch.cat([x, y.to(x.dtype)], dim=1))
        h = self.encoder[1:](h)
        return self.fc_mu(h), self.fc_logvar(h)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)  # the report used exp(logvar): the variance, not std
        return mu + std * torch.randn_like(std)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return Bernoulli logits of shape ``[N, 1, image_size, image_size]``."""
        h = self.decoder[0](self.decoder_input(torch.cat([z, self.label(labels).to(z.dtype)], dim=1)))
        if self.channels_last:  # one layout for every layer after the linear one
            h = h.contiguous(memory_format=torch.channels_last)
        if not self.subpixel_output:
            return self.decoder[1:](h)
        last = self.decoder[-1]
        return subpixel_conv_transpose2d(self.decoder[1:-1](h), last.weight, last.bias)

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

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, logvar), labels), mu, logvar


def _drop(module: nn.Module) -> list[nn.Module]:
    """``[module]``, or nothing for an identity (keeps the report's layer indices)."""
    return [] if isinstance(module, nn.Identity) else [module]


def to_checkpoint(model: CVAE) -> dict[str, Any]:
    """Return the model as plain data (config + weights and prior) for ``torch.save``."""
    return {"config": asdict(model.config), "state_dict": model.state_dict()}


def from_checkpoint(checkpoint: dict[str, Any]) -> CVAE:
    """Rebuild a model saved by :func:`to_checkpoint`."""
    model = CVAE(CVAEConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
