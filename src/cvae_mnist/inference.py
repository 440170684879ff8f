"""Reconstruction and generation with a trained CVAE: the one code path that the
evaluation, the figures, the generation pipeline and the served model all use."""

from __future__ import annotations

import math

import torch

from cvae_mnist.errors import ModelFileError
from cvae_mnist.losses import kl_divergence, reconstruction_loss
from cvae_mnist.model import CVAE, from_checkpoint


@torch.inference_mode()
def reconstruct(
    model: CVAE, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Decode the posterior mean of each image: Bernoulli logits on the CPU, ``[N, 1, H, W]``.

    Decoding ``mu`` (not a sample of z) gives the model's deterministic best guess,
    so the metrics do not depend on a random draw.
    """
    model.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        mu, _ = model.encode(x, y)
        out.append(model.decode(mu, y).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def generate(model: CVAE, labels: torch.Tensor, seed: int, device: torch.device) -> torch.Tensor:
    """Decode one prior sample z ~ N(0, I) per label: images in [0, 1] on the CPU.

    The latent vectors are drawn from a CPU generator seeded with ``seed``, so the
    same seed and labels give the same images on any device.
    """
    model.eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), model.config.latent_dim, generator=generator)
    return torch.sigmoid(model.decode(z.to(device), labels.to(device))).float().cpu()


def load_model(checkpoint: dict, name: str = "cvae_model") -> CVAE:
    """Rebuild a model from a checkpoint, with a clear message if it does not fit.

    Args:
        checkpoint: ``{"config", "state_dict"}`` as saved by the training pipeline.
        name: What to call the checkpoint in error messages (its catalog name).
    """
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise ModelFileError(f"{name} is not a CVAE checkpoint (expected keys 'config' and 'state_dict').")
    try:
        return from_checkpoint(checkpoint)
    except (TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{name} does not match its saved config {checkpoint['config']}: {exc}") from exc


@torch.inference_mode()
def likelihood_terms(
    model: CVAE,
    images: torch.Tensor,
    labels: torch.Tensor,
    samples: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Per-image terms of the likelihood, in nats, with ``samples`` draws of z ~ q(z | x, y).

    Returns ``kl`` (analytic KL(q || N(0, I))), ``reconstruction`` (the mean over draws of
    -log p(x | z, y), Bernoulli), ``neg_elbo`` (their sum, beta = 1) and ``iw_nll``, the
    importance-weighted estimate of -log p(x | y) (Burda et al. 2016):
    ``-log mean_k p(x | z_k, y) p(z_k) / q(z_k | x, y)``, which tightens as ``samples`` grows.
    """
    model.eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, batch_size // samples)  # images per step: chunk * samples decodes at once
    log_2pi = math.log(2 * math.pi)
    out: dict[str, list[torch.Tensor]] = {"kl": [], "reconstruction": [], "neg_elbo": [], "iw_nll": []}
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(device)
        y = labels[start : start + chunk].to(device)
        mu, logvar = (t.float() for t in model.encode(x, y))
        eps = torch.randn(samples, *mu.shape, generator=generator).to(device)
        z = mu + torch.exp(0.5 * logvar) * eps  # [samples, n, latent]
        logits = model.decode(z.flatten(0, 1), y.repeat(samples)).float()
        log_px = -reconstruction_loss(logits, x.repeat(samples, 1, 1, 1), "bce").view(samples, -1)
        log_pz = -0.5 * (z.pow(2) + log_2pi).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + log_2pi + logvar).sum(-1)
        kl = kl_divergence(mu, logvar)
        reconstruction = -log_px.mean(0)
        out["kl"].append(kl.cpu())
        out["reconstruction"].append(reconstruction.cpu())
        out["neg_elbo"].append((reconstruction + kl).cpu())
        log_w = log_px + log_pz - log_qz
        out["iw_nll"].append((math.log(samples) - torch.logsumexp(log_w, dim=0)).cpu())
    return {key: torch.cat(values) for key, values in out.items()}
