"""The CVAE's prior p(z | y), what generation samples from and the likelihood is scored under:
N(0, I), Gaussians per class or a conditional flow, optionally blended with pseudo-inputs. No Kedro here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import zuko
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from cvae_mnist.params import PriorParams

SAMPLE_CHUNK = (
    1024  # codes drawn at a time: bounds the gathered [n, d, d] scales of a mixture (40 MB at d = 100)
)


class Prior(nn.Module):
    """p(z | y) for ``num_classes`` labels over ``latent_dim`` dimensions."""

    def __init__(self, latent_dim: int, num_classes: int) -> None:
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(z | y) of codes ``z`` ``[..., N, latent_dim]`` (leading dimensions: several draws
        per label) under ``labels`` ``[N]``: ``[..., N]``."""
        raise NotImplementedError

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One draw per label, ``[N, latent_dim]`` on the labels' device; its noise is drawn
        on the CPU from ``generator``."""
        raise NotImplementedError

    def _noise(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator).to(device)


class StandardNormalPrior(Prior):
    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._noise(len(labels), generator, labels.device)


class MixturePrior(Prior):
    """``components`` full-covariance Gaussians per class, held as buffers."""

    def __init__(self, latent_dim: int, num_classes: int, components: int) -> None:
        super().__init__(latent_dim, num_classes)
        k, m, d = num_classes, components, latent_dim
        self.register_buffer("weights", torch.full((k, m), 1 / m))
        self.register_buffer("mean", torch.zeros(k, m, d))
        self.register_buffer("scale_tril", torch.eye(d).repeat(k, m, 1, 1))

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # a batch of N mixtures, broadcast over the draws: the [N, m, d, d] scales gathered once
        mixture = MixtureSameFamily(
            Categorical(probs=self.weights[labels], validate_args=False),
            MultivariateNormal(self.mean[labels], scale_tril=self.scale_tril[labels], validate_args=False),
            validate_args=False,
        )
        return mixture.log_prob(z)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = self._noise(len(labels), generator, labels.device)
        uniform = torch.rand(len(labels), generator=generator).to(labels.device)  # picks the components
        out = []
        for start in range(0, len(labels), SAMPLE_CHUNK):
            y, u = labels[start : start + SAMPLE_CHUNK], uniform[start : start + SAMPLE_CHUNK]
            cumulative = self.weights[y].cumsum(dim=1)
            component = torch.searchsorted(cumulative, u[:, None]).clamp(max=cumulative.shape[1] - 1)[:, 0]
            scale = self.scale_tril[y, component]
            out.append(
                self.mean[y, component] + (scale @ noise[start : start + SAMPLE_CHUNK, :, None])[..., 0]
            )
        return torch.cat(out) if out else noise


class FlowPrior(Prior):
    """A masked autoregressive flow conditioned on the one-hot label, in coupling form, on
    codes whitened per class: ``z = mean_y + scale_y u``, ``u`` from the flow. The class's
    mean and covariance (``scale_y`` its Cholesky factor) take the linear structure, which
    coupling layers learn slowly; the flow learns what is left."""

    def __init__(self, latent_dim: int, num_classes: int, transforms: int, hidden: int) -> None:
        super().__init__(latent_dim, num_classes)
        self.flow = zuko.flows.MAF(
            latent_dim, num_classes, transforms=transforms, passes=2, hidden_features=(hidden, hidden)
        )
        self.register_buffer("mean", torch.zeros(num_classes, latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim).repeat(num_classes, 1, 1))

    def _context(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.num_classes).float()

    def whiten(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log |det d u / d z|)`` of codes ``[..., N, d]`` under ``labels`` ``[N]``."""
        centred = (z.float() - self.mean[labels]).unsqueeze(-1)
        scale = self.scale_tril[labels].expand(*centred.shape[:-2], -1, -1)
        u = torch.linalg.solve_triangular(scale, centred, upper=False).squeeze(-1)
        return u, -self.scale_tril[labels].diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        u, log_det = self.whiten(z, labels)
        context = self._context(labels).expand(*u.shape[:-1], self.num_classes)
        flat = self.flow(context.reshape(-1, self.num_classes)).log_prob(u.reshape(-1, u.shape[-1]))
        return flat.view(u.shape[:-1]) + log_det

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = self._noise(len(labels), generator, labels.device)
        u = self.flow.transform(self._context(labels)).inv(noise)
        return self.mean[labels] + (self.scale_tril[labels] @ u.unsqueeze(-1)).squeeze(-1)


class PseudoInputPrior(Prior):
    """The posteriors q(z | x_i, y) of ``count`` training images per class, equally weighted:
    a VampPrior (Tomczak & Welling 2018) whose pseudo-inputs are training images. Its draws
    are codes of real training digits, jittered by their posterior noise."""

    def __init__(self, latent_dim: int, num_classes: int, count: int) -> None:
        super().__init__(latent_dim, num_classes)
        self.register_buffer("mean", torch.zeros(num_classes, count, latent_dim))
        self.register_buffer("logvar", torch.zeros(num_classes, count, latent_dim))

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # |z - m|^2 / s^2 expanded into matrix products ([draws, d] x [d, count] per row), on
        # codes centred on their class's pseudo-inputs so that float32 keeps ~0.02 nats
        centre, draws = self.mean.mean(1)[labels], z.reshape(-1, *z.shape[-2:]).float()  # [D, N, d]
        out = []
        for start in range(0, len(labels), SAMPLE_CHUNK // 16):  # bounds the gathered [n, count, d]
            rows = slice(start, start + SAMPLE_CHUNK // 16)
            y, zc = labels[rows], (draws[:, rows] - centre[rows]).transpose(0, 1)  # [n, D, d]
            mean, precision = self.mean[y] - centre[rows, None], (-self.logvar[y]).exp()  # [n, count, d]
            squared = (
                torch.bmm(zc.pow(2), precision.mT)
                - 2 * torch.bmm(zc, (mean * precision).mT)
                + (mean.pow(2) * precision).sum(-1)[:, None]
            )  # [n, draws, count]
            log_norm = self.logvar[y].sum(-1) + self.latent_dim * math.log(2 * math.pi)
            out.append(torch.logsumexp(-0.5 * (squared + log_norm[:, None]), dim=-1))
        scores = torch.cat(out).T - math.log(self.mean.shape[1])  # [D, N]
        return scores.reshape(z.shape[:-1]).to(z.dtype)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = self._noise(len(labels), generator, labels.device)
        pick = torch.randint(self.mean.shape[1], (len(labels),), generator=generator).to(labels.device)
        return self.mean[labels, pick] + torch.exp(0.5 * self.logvar[labels, pick]) * noise


class BlendedPrior(Prior):
    """``(1 - weight) * base + weight * pseudo``: a fitted density, and training codes."""

    def __init__(self, base: Prior, pseudo: PseudoInputPrior, weight: float) -> None:
        super().__init__(base.latent_dim, base.num_classes)
        self.base, self.pseudo, self.weight = base, pseudo, weight

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.weight in (0.0, 1.0):
            return (self.pseudo if self.weight else self.base).log_prob(z, labels)
        return torch.logaddexp(
            math.log1p(-self.weight) + self.base.log_prob(z, labels),
            math.log(self.weight) + self.pseudo.log_prob(z, labels),
        )

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        base, pseudo = self.base.sample(labels, generator), self.pseudo.sample(labels, generator)
        which = (torch.rand(len(labels), generator=generator) < self.weight).to(labels.device)
        return torch.where(which[:, None], pseudo, base)


def build_prior(params: PriorParams, latent_dim: int, num_classes: int) -> Prior:
    """The prior ``params`` describe, unfitted (a mixture and a flow start as N(0, I)-like)."""
    if params.kind == "mixture":
        base: Prior = MixturePrior(latent_dim, num_classes, params.components)
    elif params.kind == "flow":
        base = FlowPrior(latent_dim, num_classes, params.flow_transforms, params.flow_hidden)
    else:
        base = StandardNormalPrior(latent_dim, num_classes)
    if params.pseudo_inputs == 0:
        return base
    pseudo = PseudoInputPrior(latent_dim, num_classes, params.pseudo_inputs)
    return BlendedPrior(base, pseudo, params.pseudo_weight)
