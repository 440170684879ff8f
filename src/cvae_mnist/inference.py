"""Reconstruction and generation with a trained CVAE: the one code path that the
evaluation, the figures, the generation pipeline and the served model all use."""

from __future__ import annotations

import torch

from cvae_mnist.errors import ModelFileError
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
