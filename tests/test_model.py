import pytest
import torch
from torch.distributions import Bernoulli, Normal

from cvae_mnist.datasets import CVAEDataset
from cvae_mnist.errors import ModelFileError
from cvae_mnist.inference import generate, likelihood_terms, reconstruct
from cvae_mnist.losses import kl_divergence
from cvae_mnist.model import CVAE
from cvae_mnist.params import ModelParams
from cvae_mnist.prior import fit_class_prior
from cvae_mnist.saving import from_checkpoint, to_checkpoint
from mnist_fixtures import raises_user_error

PLAIN = {"conditioning": "one_hot", "normalization": "none", "residual_blocks": 0, "prior": "standard_normal"}


def config(**changes) -> ModelParams:
    """A small model: the default's layers unless changed."""
    return ModelParams(**{"latent_dim": 8, "base_channels": 4, **PLAIN, **changes})


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CVAE(config())


def test_forward_shapes(model):
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    logits, mu, logvar = model(x, y)
    assert logits.shape == (5, 1, 28, 28)
    assert mu.shape == logvar.shape == (5, 8)


def test_reparameterize_uses_the_standard_deviation():
    torch.manual_seed(0)
    mu, logvar = torch.zeros(200_000, 1), torch.full((200_000, 1), 2.0)
    z = CVAE.reparameterize(mu, logvar)
    # std = exp(0.5 * 2) = e; the report's exp(logvar) would give e^2
    assert z.std().item() == pytest.approx(torch.e, rel=0.01)


def test_the_dataset_saves_a_model_and_loads_it_ready_with_weights_only(model, tmp_path, monkeypatch):
    dataset = CVAEDataset(filepath=str(tmp_path / "cvae.pt"))
    dataset.save(model)
    loads = []
    monkeypatch.setattr(
        torch, "load", lambda *a, **kw: loads.append(kw) or torch.serialization.load(*a, **kw)
    )
    restored = dataset.load()
    assert loads == [{"map_location": "cpu", "weights_only": True}]
    assert isinstance(restored, CVAE) and restored.config == model.config and not restored.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor)


def test_a_saved_model_that_does_not_fit_its_parameters_is_named(model, tmp_path):
    checkpoint = to_checkpoint(model)
    checkpoint["config"]["latent_dim"] = 16
    with pytest.raises(ModelFileError, match=r"cvae.pt does not match the model parameters saved in it"):
        from_checkpoint(checkpoint, "cvae.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with raises_user_error(ModelFileError, match=r"other.pt is not a CVAE saved by this project"):
        CVAEDataset(filepath=str(tmp_path / "other.pt")).load()


def test_reconstruct_and_generate_shapes_and_range(model):
    images, labels = torch.rand(7, 1, 28, 28), torch.arange(7)
    logits = reconstruct(model, images, labels, batch_size=3, device=torch.device("cpu"))
    assert logits.shape == (7, 1, 28, 28)
    generated = generate(model, labels, seed=0, device=torch.device("cpu"))
    assert generated.shape == (7, 1, 28, 28)
    assert 0.0 <= generated.min() and generated.max() <= 1.0


def test_generate_is_deterministic_per_seed(model):
    labels = torch.tensor([3, 3])
    first = generate(model, labels, seed=5, device=torch.device("cpu"))
    assert torch.equal(first, generate(model, labels, seed=5, device=torch.device("cpu")))
    assert not torch.equal(first, generate(model, labels, seed=6, device=torch.device("cpu")))


def test_likelihood_terms_match_torch_distributions(model):
    images, labels = torch.rand(5, 1, 28, 28), torch.arange(5)
    terms = likelihood_terms(
        model, images, labels, samples=1, batch_size=8, device=torch.device("cpu"), seed=0
    )
    with torch.no_grad():
        mu, logvar = model.encode(images, labels)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn(1, *mu.shape, generator=torch.Generator().manual_seed(0))[0]
        bernoulli = Bernoulli(
            logits=model.decode(z, labels), validate_args=False
        )  # continuous targets: cross-entropy
        log_px = bernoulli.log_prob(images).flatten(1).sum(1)
        log_w = log_px + Normal(0, 1).log_prob(z).sum(1) - Normal(mu, std).log_prob(z).sum(1)
    # with one draw the importance-weighted estimate is -log w of that draw
    torch.testing.assert_close(terms["iw_nll"], -log_w, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(terms["reconstruction"], -log_px, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(terms["kl"], kl_divergence(mu, logvar))
    torch.testing.assert_close(terms["neg_elbo"], terms["reconstruction"] + terms["kl"])


def test_more_importance_samples_tighten_the_bound(model):
    images, labels = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    one = likelihood_terms(
        model, images, labels, samples=1, batch_size=64, device=torch.device("cpu"), seed=0
    )
    many = likelihood_terms(
        model, images, labels, samples=64, batch_size=64, device=torch.device("cpu"), seed=0
    )
    assert many["iw_nll"].mean() < one["iw_nll"].mean()


def _shapes(model: CVAE) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_the_report_architecture_is_the_reports_nn_cvae():
    model = CVAE(ModelParams(architecture="report", **PLAIN))
    # encoder 11 -> 32 -> 64 -> 128 channels, 28 -> 14 -> 7 -> 3; decoder 3 -> 6 -> 14 -> 28
    assert _shapes(model) == {
        "conv1.weight": (32, 11, 4, 4), "conv1.bias": (32,),
        "encoder.conv2.weight": (64, 32, 4, 4), "encoder.conv2.bias": (64,),
        "encoder.conv3.weight": (128, 64, 4, 4), "encoder.conv3.bias": (128,),
        "fc_mu.weight": (100, 1152), "fc_mu.bias": (100,),
        "fc_logvar.weight": (100, 1152), "fc_logvar.bias": (100,),
        "decoder_input.weight": (1152, 110), "decoder_input.bias": (1152,),
        "decoder.upconv1.weight": (128, 64, 4, 4), "decoder.upconv1.bias": (64,),
        "decoder.upconv2.weight": (64, 32, 4, 4), "decoder.upconv2.bias": (32,),
        "decoder.upconv3.weight": (32, 1, 4, 4), "decoder.upconv3.bias": (1,),
    }  # fmt: skip
    assert [m.padding for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)] == [
        (1, 1),
        (0, 0),
        (1, 1),
    ]
    assert [type(m).__name__ for m in model.decoder][:2] == ["Unflatten", "ConvTranspose2d"]  # no ReLU first
    h = model.decoder_input(torch.zeros(1, 110))
    sizes = [h.shape[-1]]
    for layer in model.decoder:
        h = layer(h)
        sizes += [h.shape[-1]] if isinstance(layer, torch.nn.ConvTranspose2d) else []
    assert sizes == [1152, 6, 14, 28]


def test_the_two_stage_architecture_with_the_reports_layers():
    model = CVAE(ModelParams(**PLAIN))
    assert _shapes(model) == {
        "conv1.weight": (32, 11, 4, 4), "conv1.bias": (32,),
        "encoder.conv2.weight": (64, 32, 4, 4), "encoder.conv2.bias": (64,),
        "fc_mu.weight": (100, 3136), "fc_mu.bias": (100,),
        "fc_logvar.weight": (100, 3136), "fc_logvar.bias": (100,),
        "decoder_input.weight": (3136, 110), "decoder_input.bias": (3136,),
        "decoder.upconv1.weight": (64, 32, 4, 4), "decoder.upconv1.bias": (32,),
        "decoder.upconv2.weight": (32, 1, 4, 4), "decoder.upconv2.bias": (1,),
    }  # fmt: skip


WIDER = config(
    conditioning="embedding", embedding_dim=3, normalization="batch", residual_blocks=2, latent_dim=6
)


def test_embedding_batch_norm_and_residual_blocks_shapes():
    torch.manual_seed(0)
    model = CVAE(WIDER)
    logits, mu, logvar = model(torch.rand(5, 1, 28, 28), torch.arange(5))
    assert logits.shape == (5, 1, 28, 28) and mu.shape == logvar.shape == (5, 6)
    assert model.conv1.in_channels == 1 + 3  # image + embedding channels
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 3 + 2 * 2 * 2


def test_the_standard_normal_prior_samples_the_noise_itself(model):
    noise, labels = torch.randn(9, 8), torch.arange(9)
    assert torch.equal(model.prior_sample(labels, noise, torch.rand(9)), noise)


def _clusters(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent codes of 10 classes, each two well-separated Gaussian clusters (weights 0.25 / 0.75)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    centres = torch.randn(10, 2, 8, generator=generator) * 5
    second = (torch.rand(n, generator=generator) < 0.75).long()
    codes = centres[labels, second] + 0.5 * torch.randn(n, 8, generator=generator)
    return codes, labels, centres


def test_fit_class_prior_recovers_each_class_mixture():
    model = CVAE(config(prior="fitted", prior_components=2))
    codes, labels, centres = _clusters(40_000)
    # posterior means at the clusters' points, each with variance 0.01 around it
    fit_class_prior(model, codes, torch.full_like(codes, -4.6052), labels, seed=0)
    for k in range(10):
        order = model.prior_weights[k].argsort()  # the lighter component first
        torch.testing.assert_close(
            model.prior_weights[k][order], torch.tensor([0.25, 0.75]), atol=0.03, rtol=0
        )
        torch.testing.assert_close(
            model.prior_mean[k][order], centres[k], atol=0.08, rtol=0
        )  # 5 standard errors
        covariance = model.prior_scale_tril[k] @ model.prior_scale_tril[k].transpose(-1, -2)
        expected = (0.25 + 0.01) * torch.eye(8).expand(2, 8, 8)  # spread of the means + posterior variance
        torch.testing.assert_close(covariance, expected, atol=0.05, rtol=0)  # ~4 standard errors
    # generation draws from it: the draws of class 3 sit in its two clusters, 1 : 3
    z = model.prior_sample(torch.full((8000,), 3), torch.randn(8000, 8), torch.rand(8000))
    nearest = torch.cdist(z, centres[3]).argmin(1)
    assert nearest.float().mean().item() == pytest.approx(0.75, abs=0.02)
    log_p = model.prior(torch.full((2,), 3)).log_prob(centres[3])  # densest at the centres
    assert (log_p > model.prior(torch.full((2,), 3)).log_prob(centres[3] + 2)).all()


def test_fit_class_prior_needs_enough_images_per_class():
    model = CVAE(config(prior="fitted", prior_components=3))
    codes, labels, _ = _clusters(25)  # classes 0-4 have 3 images, 5-9 only 2
    with pytest.raises(
        ValueError, match="fitting 3 Gaussians to class 5 needs at least 3 training images of it, got 2"
    ):
        fit_class_prior(model, codes, torch.zeros_like(codes), labels, seed=0)


def test_likelihood_terms_use_the_fitted_prior(model):
    images, labels = torch.rand(5, 1, 28, 28), torch.arange(5)
    before = likelihood_terms(
        model, images, labels, samples=4, batch_size=8, device=torch.device("cpu"), seed=0
    )
    with torch.no_grad():
        mu, logvar = model.encode(images, labels)
        model.prior_mean[:5, 0] = mu  # a prior centred on each posterior: a smaller KL
    after = likelihood_terms(
        model, images, labels, samples=4, batch_size=8, device=torch.device("cpu"), seed=0
    )
    assert (after["kl"] < before["kl"]).all()
    torch.testing.assert_close(after["reconstruction"], before["reconstruction"])  # same draws of z
    expected_kl = 0.5 * (logvar.exp() - 1 - logvar).sum(1)  # KL(N(mu, s^2) || N(mu, 1))
    torch.testing.assert_close(after["kl"], expected_kl, rtol=1e-4, atol=1e-4)


def test_a_mixture_prior_kl_is_estimated_with_the_draws():
    torch.manual_seed(0)
    model = CVAE(config(prior="fitted", prior_components=2))
    images, labels = torch.rand(3, 1, 28, 28), torch.arange(3)
    # two identical components: the same density as one Gaussian, whose KL is known
    estimated = likelihood_terms(model, images, labels, 4000, 4000, torch.device("cpu"), seed=0)["kl"]
    assert model.prior_weights.shape == (10, 2)
    single = CVAE(config())
    single.load_state_dict(
        {**model.state_dict(), **{k: v for k, v in single.state_dict().items() if "prior" in k}}
    )
    exact = likelihood_terms(single, images, labels, 4000, 4000, torch.device("cpu"), seed=0)["kl"]
    torch.testing.assert_close(estimated, exact, rtol=0.05, atol=0.05)
    again = likelihood_terms(model, images, labels, 4000, 4000, torch.device("cpu"), seed=0)["kl"]
    assert torch.equal(again, estimated)  # deterministic per seed
