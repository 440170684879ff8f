"""The priors p(z | y): densities, seeded sampling, fitting, and how the likelihood uses them."""

import math

import pytest
import torch

from cvae_mnist.core.inference import generate, likelihood_terms
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.prior import (
    SAMPLE_CHUNK,
    BlendedPrior,
    FlowPrior,
    MixturePrior,
    PseudoInputPrior,
    StandardNormalPrior,
    build_prior,
)
from cvae_mnist.core.prior_fitting import fit_prior
from cvae_mnist.datasets import CVAEDataset
from cvae_mnist.params import ModelParams, PriorParams

CPU = torch.device("cpu")
SMALL = ModelParams(latent_dim=8, base_channels=4, decoder_conditioning="input")


def _model(**prior) -> CVAE:
    torch.manual_seed(0)
    return CVAE(SMALL, PriorParams(**prior))


def _clusters(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent codes of 10 classes, each two well-separated Gaussian clusters (weights 0.25 / 0.75)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    centres = torch.randn(10, 2, 8, generator=generator) * 5
    second = (torch.rand(n, generator=generator) < 0.75).long()
    codes = centres[labels, second] + 0.5 * torch.randn(n, 8, generator=generator)
    return codes, labels, centres


def test_build_prior_gives_each_kind():
    assert isinstance(build_prior(PriorParams(kind="standard_normal"), 8, 10), StandardNormalPrior)
    mixture = build_prior(PriorParams(kind="mixture", components=3), 8, 10)
    assert isinstance(mixture, MixturePrior) and mixture.weights.shape == (10, 3)
    assert isinstance(
        build_prior(PriorParams(kind="flow", flow_transforms=2, flow_hidden=16), 8, 10),
        FlowPrior,
    )


def test_the_standard_normal_prior_samples_the_noise_itself():
    prior, labels = StandardNormalPrior(8, 10), torch.arange(9)
    expected = torch.randn(9, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(prior.sample(labels, torch.Generator().manual_seed(3)), expected)
    z = torch.randn(4, 8)
    torch.testing.assert_close(
        prior.log_prob(z, labels[:4]), torch.distributions.Normal(0, 1).log_prob(z).sum(-1)
    )


def test_fit_prior_recovers_each_class_mixture():
    prior = MixturePrior(8, 10, components=2)
    codes, labels, centres = _clusters(40_000)
    # posterior means at the clusters' points, each with variance 0.01 around it
    curve = fit_prior(
        prior,
        codes,
        torch.full_like(codes, -4.6052),
        labels,
        PriorParams(kind="mixture"),
        seed=0,
    )
    assert len(curve) == 10 and all(math.isfinite(v) for v in curve)  # one score per class
    for k in range(10):
        order = prior.weights[k].argsort()  # the lighter component first
        torch.testing.assert_close(prior.weights[k][order], torch.tensor([0.25, 0.75]), atol=0.03, rtol=0)
        torch.testing.assert_close(prior.mean[k][order], centres[k], atol=0.08, rtol=0)  # 5 standard errors
        covariance = prior.scale_tril[k] @ prior.scale_tril[k].transpose(-1, -2)
        expected = (0.25 + 0.01) * torch.eye(8).expand(2, 8, 8)  # spread of the means + posterior variance
        torch.testing.assert_close(covariance, expected, atol=0.05, rtol=0)  # ~4 standard errors
    # generation draws from it: the draws of class 3 sit in its two clusters, 1 : 3
    z = prior.sample(torch.full((8000,), 3), torch.Generator().manual_seed(0))
    nearest = torch.cdist(z, centres[3]).argmin(1)
    assert nearest.float().mean().item() == pytest.approx(0.75, abs=0.02)
    three = torch.full((2,), 3)
    assert (prior.log_prob(centres[3], three) > prior.log_prob(centres[3] + 2, three)).all()


def test_a_mixture_needs_enough_images_per_class():
    codes, labels, _ = _clusters(25)  # classes 0-4 have 3 images, 5-9 only 2
    with pytest.raises(
        ValueError, match="fitting 3 Gaussians to class 5 needs at least 3 training images of it, got 2"
    ):
        fit_prior(MixturePrior(8, 10, 3), codes, torch.zeros_like(codes), labels, PriorParams(), seed=0)


def test_mixture_sampling_in_chunks_equals_one_draw_at_a_time():
    prior = MixturePrior(3, 10, components=2)
    with torch.no_grad():
        prior.mean.normal_()
        prior.scale_tril.mul_(torch.rand(10, 2, 1, 1) + 0.5)
    labels = torch.arange(SAMPLE_CHUNK + 7) % 10
    z = prior.sample(labels, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    noise, uniform = (
        torch.randn(len(labels), 3, generator=generator),
        torch.rand(len(labels), generator=generator),
    )
    component = (uniform >= 0.5).long()  # equal weights: the second component above one half
    expected = (
        prior.mean[labels, component] + (prior.scale_tril[labels, component] @ noise[..., None])[..., 0]
    )
    torch.testing.assert_close(z, expected)


def test_a_flow_learns_each_class_and_samples_it_by_seed():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(20_000) % 10
    centres = 3 * torch.randn(10, 8, generator=generator)
    codes = centres[labels] + 0.5 * torch.randn(len(labels), 8, generator=generator)
    prior = FlowPrior(8, 10, transforms=2, hidden=64)
    params = PriorParams(kind="flow", epochs=4, batch_size=256, lr=3e-3)
    torch.manual_seed(0)
    before = -prior.log_prob(codes, labels).mean().item()
    curve = fit_prior(prior, codes, torch.full_like(codes, -4.6052), labels, params, seed=0)
    assert len(curve) == 4 and curve[-1] < curve[0] < before
    with torch.no_grad():
        z = prior.sample(torch.full((2000,), 4), torch.Generator().manual_seed(0))
        again = prior.sample(torch.full((2000,), 4), torch.Generator().manual_seed(0))
        other = prior.sample(torch.full((2000,), 4), torch.Generator().manual_seed(1))
        assert torch.equal(z, again) and not torch.equal(z, other)
        # the draws of class 4 lie near its own centre, not those of the other classes
        assert (torch.cdist(z, centres).argmin(1) == 4).float().mean() > 0.95
        # and the density ranks a class's own codes above another class's
        four = labels == 4
        own, shifted = (
            prior.log_prob(codes[four], labels[four]),
            prior.log_prob(codes[four], labels[four] + 1),
        )
        assert (own > shifted).float().mean() > 0.95


def test_the_fitted_prior_travels_with_the_model(tmp_path):
    model = _model(kind="flow", flow_transforms=2, flow_hidden=16)
    with torch.no_grad():
        for parameter in model.prior.parameters():
            parameter.normal_(0, 0.1)  # a flow that is not the identity
    dataset = CVAEDataset(filepath=str(tmp_path / "cvae.pt"))
    dataset.save(model)
    loaded = dataset.load()
    assert loaded.prior_config == model.prior_config and isinstance(loaded.prior, FlowPrior)
    labels = torch.arange(10)
    assert torch.equal(generate(model, labels, 5, CPU), generate(loaded, labels, 5, CPU))


def test_likelihood_terms_use_the_prior():
    model = _model(kind="mixture", components=1)
    images, labels = torch.rand(5, 1, 28, 28), torch.arange(5)
    before = likelihood_terms(model, images, labels, samples=2000, batch_size=4000, device=CPU, seed=0)
    with torch.no_grad():
        mu, logvar = model.encode(images, labels)
        model.prior.mean[:5, 0] = mu  # a prior centred on each posterior: a smaller KL
    after = likelihood_terms(model, images, labels, samples=2000, batch_size=4000, device=CPU, seed=0)
    assert (after["kl"] < before["kl"]).all()
    torch.testing.assert_close(after["reconstruction"], before["reconstruction"])  # same draws of z
    expected_kl = 0.5 * (logvar.exp() - 1 - logvar).sum(1)  # KL(N(mu, s^2) || N(mu, 1))
    torch.testing.assert_close(after["kl"], expected_kl, rtol=0.1, atol=0.05)  # estimated with the draws


def test_a_mixture_kl_is_estimated_with_the_draws_and_matches_the_closed_form():
    mixture, normal = _model(kind="mixture", components=2), _model(kind="standard_normal")
    normal.load_state_dict({k: v for k, v in mixture.state_dict().items() if not k.startswith("prior.")})
    images, labels = torch.rand(3, 1, 28, 28), torch.arange(3)
    # two identical standard-normal components: the density of N(0, I), whose KL is exact
    estimated = likelihood_terms(mixture, images, labels, 4000, 4000, CPU, seed=0)["kl"]
    exact = likelihood_terms(normal, images, labels, 4000, 4000, CPU, seed=0)["kl"]
    torch.testing.assert_close(estimated, exact, rtol=0.05, atol=0.05)
    again = likelihood_terms(mixture, images, labels, 4000, 4000, CPU, seed=0)["kl"]
    assert torch.equal(again, estimated)  # deterministic per seed


@pytest.mark.parametrize("kind", ["standard_normal", "mixture", "flow", "pseudo"])
def test_log_prob_broadcasts_over_draws_as_it_scores_each_draw(kind):
    torch.manual_seed(0)
    pseudo = (
        {"kind": "mixture", "pseudo_inputs": 3, "pseudo_weight": 0.4} if kind == "pseudo" else {"kind": kind}
    )
    prior = build_prior(
        PriorParams(**{"pseudo_inputs": 0, **pseudo}, components=2, flow_transforms=2, flow_hidden=16), 8, 10
    )
    with torch.no_grad():
        for tensor in [*prior.parameters(), *(b for n, b in prior.named_buffers() if n == "mean")]:
            tensor.normal_(0, 0.3)
        z, labels = torch.randn(5, 4, 8), torch.tensor([0, 3, 3, 9])  # 5 draws for each of 4 labels
        each = torch.stack([prior.log_prob(draw, labels) for draw in z])
        torch.testing.assert_close(prior.log_prob(z, labels), each)


def test_pseudo_inputs_are_the_posteriors_of_training_images_of_each_class():
    generator = torch.Generator().manual_seed(0)
    mu, logvar, labels = torch.randn(60, 8, generator=generator), -torch.rand(60, 8), torch.arange(60) % 10
    prior = build_prior(PriorParams(kind="mixture", components=2, pseudo_inputs=3, pseudo_weight=0.3), 8, 10)
    assert isinstance(prior, BlendedPrior) and isinstance(prior.pseudo, PseudoInputPrior)
    curve = fit_prior(prior, mu, logvar, labels, PriorParams(), seed=1)
    assert len(curve) == 10  # the mixture beside them was fitted too
    assert not torch.equal(prior.base.mean, torch.zeros_like(prior.base.mean))
    for k in range(10):
        for mean, var in zip(prior.pseudo.mean[k], prior.pseudo.logvar[k]):
            row = ((mu == mean).all(1) & (labels == k)).nonzero()[:, 0]
            assert len(row) == 1 and torch.equal(logvar[row[0]], var)  # a training image of class k
    with pytest.raises(
        ValueError, match="7 pseudo-inputs of class 0 need as many training images of it, got 6"
    ):
        fit_prior(
            build_prior(PriorParams(components=2, pseudo_inputs=7), 8, 10),
            mu,
            logvar,
            labels,
            PriorParams(),
            seed=1,
        )


def test_the_pseudo_input_density_is_the_mean_of_their_gaussians():
    prior = PseudoInputPrior(8, 10, 3)
    generator = torch.Generator().manual_seed(0)
    prior.mean.normal_(generator=generator)
    prior.logvar.uniform_(-3, 0, generator=generator)
    z, labels = torch.randn(5, 4, 8, generator=generator), torch.tensor([0, 3, 3, 9])
    gaussians = torch.distributions.Independent(
        torch.distributions.Normal(prior.mean[labels], (0.5 * prior.logvar[labels]).exp()), 1
    )
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(4, 3)), gaussians
    )
    torch.testing.assert_close(prior.log_prob(z, labels), mixture.log_prob(z))
    draws = prior.sample(torch.full((3000,), 3), torch.Generator().manual_seed(1))
    nearest = torch.cdist(draws, prior.mean[3]).argmin(1)
    spread = ((draws - prior.mean[3][nearest]) / (0.5 * prior.logvar[3][nearest]).exp()).std()
    assert nearest.bincount(minlength=3).min() > 800 and 0.9 < spread < 1.1  # each equally, its own width
    assert torch.equal(draws, prior.sample(torch.full((3000,), 3), torch.Generator().manual_seed(1)))


def test_a_blended_prior_weighs_its_two_densities_and_draws_from_each_by_weight():
    base = StandardNormalPrior(8, 10)
    pseudo = PseudoInputPrior(8, 10, 2)
    pseudo.mean.fill_(20.0)  # far from N(0, I): each draw's source is plain
    pseudo.logvar.fill_(-4.0)
    blend = BlendedPrior(base, pseudo, 0.25)
    z, labels = torch.randn(3, 4, 8), torch.tensor([1, 2, 2, 5])
    expected = torch.logaddexp(
        math.log(0.75) + base.log_prob(z, labels), math.log(0.25) + pseudo.log_prob(z, labels)
    )
    torch.testing.assert_close(blend.log_prob(z, labels), expected)
    draws = blend.sample(torch.arange(10).repeat(400), torch.Generator().manual_seed(0))
    share = (draws.mean(1) > 10).float().mean().item()
    assert 0.22 < share < 0.28
    assert torch.equal(BlendedPrior(base, pseudo, 1.0).log_prob(z, labels), pseudo.log_prob(z, labels))
