"""The CVAE objective: reconstruction + beta * KL, each summed over an image's pixels
or latent dimensions and averaged over the images of a batch (nats per image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RECONSTRUCTION_LOSSES = ("bce", "mse")


def reconstruction_loss(
    logits: torch.Tensor, target: torch.Tensor, kind: str = "bce", fused: bool = True
) -> torch.Tensor:
    """Per-image reconstruction loss, summed over pixels, as a tensor of shape ``[N]``.

    Args:
        logits: Decoder output (pre-sigmoid), ``[N, 1, H, W]``.
        target: Images in [0, 1], same shape.
        kind: ``"bce"`` (Bernoulli negative log-likelihood) or ``"mse"`` (squared error).
        fused: For BCE, compute it from the logits in one stable kernel; ``False``
            takes the report's path, ``sigmoid`` then ``binary_cross_entropy``.

    Returns:
        The loss of each image.
    """
    if kind == "bce":
        if fused:
            per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        else:
            per_pixel = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none")
    elif kind == "mse":
        per_pixel = (torch.sigmoid(logits) - target) ** 2
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; use one of {RECONSTRUCTION_LOSSES}")
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
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(loss, reconstruction, kl)``, each averaged over the batch.

    ``loss = reconstruction + beta * kl``; with ``beta = 1`` it is the negative ELBO.
    """
    recon = reconstruction_loss(logits.float(), target.float(), kind, fused).mean()
    kl = kl_divergence(mu.float(), logvar.float()).mean()
    return recon + beta * kl, recon, kl
