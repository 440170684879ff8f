"""Fitting the prior p(z | y) to the codes of the training images, after training: EM for a
mixture, maximum likelihood for a flow, a seeded choice of pseudo-inputs. No Kedro here."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from cvae_mnist.core.prior import BlendedPrior, FlowPrior, MixturePrior, Prior, PseudoInputPrior
from cvae_mnist.core.runtime import progress
from cvae_mnist.params import PriorParams

REGULARIZATION = 1e-4  # added to each mixture covariance's diagonal: keeps it positive definite


def posterior_draws(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One draw z ~ q(z | x, y) = N(mu, exp(logvar)) per row."""
    noise = torch.randn(mu.shape, generator=generator, dtype=dtype)
    return mu.to(dtype) + torch.exp(0.5 * logvar.to(dtype)) * noise


def fit_prior(
    prior: Prior,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    labels: torch.Tensor,
    params: PriorParams,
    seed: int,
    device: torch.device = torch.device("cpu"),
) -> list[float]:
    """Fit ``prior`` in place to draws of the posteriors ``(mu, logvar)`` (``[N, latent_dim]``, on
    the CPU) of the training images of classes ``labels``; ``seed`` seeds the draws, the
    shuffling and the initialisation. A flow trains on ``device``, a mixture with scikit-learn on
    the CPU; the draws come from a CPU generator either way, and the prior is left on the CPU.

    Returns:
        The flow's mean negative log-likelihood per code after each epoch (nats), or the
        mixtures' per class; empty for a standard normal. A class with too few images for a
        mixture's components raises ``ValueError``.
    """
    if isinstance(prior, BlendedPrior):
        _pick_pseudo_inputs(prior.pseudo, mu, logvar, labels, seed)
        return fit_prior(prior.base, mu, logvar, labels, params, seed, device)
    if isinstance(prior, MixturePrior):
        return _fit_mixture(prior, mu, logvar, labels, seed)
    if isinstance(prior, FlowPrior):
        return _fit_flow(prior, mu, logvar, labels, params, seed, device)
    return []


def _pick_pseudo_inputs(
    prior: PseudoInputPrior, mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor, seed: int
) -> None:
    count, generator = prior.mean.shape[1], torch.Generator().manual_seed(seed)
    for k in range(prior.num_classes):
        rows = (labels == k).nonzero()[:, 0]
        if len(rows) < count:
            raise ValueError(
                f"{count} pseudo-inputs of class {k} need as many training images of it, got {len(rows)}"
            )
        chosen = rows[torch.randperm(len(rows), generator=generator)[:count]]
        prior.mean[k], prior.logvar[k] = mu[chosen].float(), logvar[chosen].float()


def _fit_mixture(
    prior: MixturePrior, mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor, seed: int
) -> list[float]:
    components = prior.weights.shape[1]
    draws = posterior_draws(mu, logvar, torch.Generator().manual_seed(seed), torch.float64)
    classes = range(prior.num_classes)
    for k in classes:
        if (labels == k).sum() < max(components, 2):
            raise ValueError(
                f"fitting {components} Gaussians to class {k} needs at least {max(components, 2)} "
                f"training images of it, got {int((labels == k).sum())}"
            )

    def fit(k: int) -> GaussianMixture:
        mixture = GaussianMixture(
            components, covariance_type="full", reg_covar=REGULARIZATION, random_state=seed
        )
        return mixture.fit(draws[labels == k].numpy())

    # One class per CPU core, each with one BLAS thread: these 100 x 100 products are too small
    # for BLAS to split well (3.4 times faster than one class at a time on 2 cores, measured).
    workers = torch.get_num_threads()  # before the limit below, which also holds torch's threads
    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
        mixtures = list(progress(pool.map(fit, classes), len(classes), "fitting the prior, class"))
    for k, mixture in zip(classes, mixtures):
        prior.weights[k] = torch.from_numpy(mixture.weights_).float()
        prior.mean[k] = torch.from_numpy(mixture.means_).float()
        prior.scale_tril[k] = torch.linalg.cholesky(torch.from_numpy(mixture.covariances_)).float()
    return [-float(m.score(draws[labels == k].numpy())) for k, m in zip(classes, mixtures)]


def _fit_flow(
    prior: FlowPrior,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    labels: torch.Tensor,
    params: PriorParams,
    seed: int,
    device: torch.device,
) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    draws = posterior_draws(mu, logvar, generator, torch.float64)
    for k in range(prior.num_classes):  # each class's mean and covariance: the whitening
        codes = draws[labels == k]
        covariance = torch.cov(codes.T) + REGULARIZATION * torch.eye(codes.shape[1], dtype=codes.dtype)
        prior.mean[k] = codes.mean(0).float()
        prior.scale_tril[k] = torch.linalg.cholesky(covariance).float()
    prior.train().to(device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=params.lr, fused=device.type in {"cpu", "cuda"})
    steps = params.epochs * math.ceil(len(labels) / params.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = []
    for epoch in range(1, params.epochs + 1):
        draws = posterior_draws(mu, logvar, generator).to(device)  # fresh draws each epoch: q, not its means
        order = torch.randperm(len(labels), generator=generator).to(device)
        targets = labels.to(device)
        total = torch.zeros((), device=device)
        batches = order.split(params.batch_size)
        for index in progress(batches, len(batches), f"fitting the prior, epoch {epoch}/{params.epochs}"):
            loss = -prior.log_prob(draws[index], targets[index]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total = total + loss.detach() * len(index)  # read back once per epoch, not per step
        history.append(float(total) / len(labels))
    prior.eval().cpu()
    return history
