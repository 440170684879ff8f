"""The CVAE objective: reconstruction + beta * KL, each summed over an image's pixels
or latent dimensions and averaged over the images of a batch (nats per image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Per-image reconstruction loss ``[N]`` of logits ``[N, 1, H, W]`` against images in
    [0, 1], summed over pixels: ``"bce"`` (Bernoulli negative log-likelihood, from the logits in
    one numerically stable kernel) or ``"mse"`` (squared error of the sigmoid)."""
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif kind == "mse":
        per_pixel = (torch.sigmoid(logits) - target) ** 2
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; use 'bce' or 'mse'")
    return per_pixel.flatten(1).sum(dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) of each image, summed over latent dims: ``[N]``."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def cvae_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kind: str = "bce",
    beta: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``loss = reconstruction + beta * kl``, each averaged over the batch; with ``beta = 1``
    the loss is the negative ELBO.

    Returns:
        ``{"loss", "reconstruction", "kl"}``, scalars.
    """
    reconstruction = reconstruction_loss(logits.float(), target.float(), kind).mean()
    kl = kl_divergence(mu.float(), logvar.float()).mean()
    return {"loss": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}
