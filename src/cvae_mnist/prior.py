"""Fit the CVAE's prior p(z | y) to the encoded training set, after training.

A VAE trained with a KL weight below 1 encodes more than N(0, I) can describe: its
aggregate posterior drifts away from the standard normal prior, and digits decoded from
N(0, I) are often not the digit asked for. Fitting a density to the latent codes of the
training images after training (Ghosh et al. 2020, "From variational to deterministic
autoencoders", ex-post density estimation) repairs the sampler without touching the
network: here one mixture of full-covariance Gaussians per class, fitted by
scikit-learn's EM to one draw of z ~ q(z | x, y) per training image of that class, i.e. to
the class's aggregate posterior. (Fitted to the posterior means alone, the mixture is
too narrow to be a density for the likelihood metrics: draws of q fall outside it.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from cvae_mnist.model import CVAE
from cvae_mnist.runtime import progress

REGULARIZATION = 1e-4  # added to each covariance's diagonal: keeps it positive definite


@torch.no_grad()
def fit_class_prior(
    model: CVAE, mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor, seed: int
) -> None:
    """Fit ``model.config.prior_components`` Gaussians per class to draws of the posteriors.

    Args:
        model: The trained model; its prior buffers are replaced.
        mu: Posterior means of the training images, ``[N, latent_dim]``.
        logvar: Their posterior log-variances, same shape.
        labels: Their classes, ``[N]``.
        seed: Seed of the draws and of the mixtures' initialisation (k-means).

    Raises:
        ValueError: If a class has fewer images than components.
    """
    components = model.config.prior_components
    generator = torch.Generator().manual_seed(seed)
    draws = mu.double() + torch.exp(0.5 * logvar.double()) * torch.randn(
        mu.shape, generator=generator, dtype=torch.float64
    )
    classes = range(model.config.num_classes)
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
        model.prior_weights[k] = torch.from_numpy(mixture.weights_).float()
        model.prior_mean[k] = torch.from_numpy(mixture.means_).float()
        model.prior_scale_tril[k] = torch.linalg.cholesky(torch.from_numpy(mixture.covariances_)).float()
