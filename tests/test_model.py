import io

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from cvae_mnist.errors import ModelFileError
from cvae_mnist.inference import generate, likelihood_terms, load_model, reconstruct
from cvae_mnist.losses import kl_divergence
from cvae_mnist.model import CVAE, CVAEConfig, to_checkpoint


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CVAE(CVAEConfig(latent_dim=8, base_channels=4))


def test_forward_shapes(model):
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    logits, mu, logvar = model(x, y)
    assert logits.shape == (5, 1, 28, 28)
    assert mu.shape == logvar.shape == (5, 8)


def test_label_lookup_computes_the_same_encoding(model):
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 3, 3, 9, 1, 7])
    plain = model.encode(x, y)
    model.label_lookup = True
    for fast, reference in zip(model.encode(x, y), plain):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_reparameterize_uses_the_standard_deviation():
    torch.manual_seed(0)
    mu, logvar = torch.zeros(200_000, 1), torch.full((200_000, 1), 2.0)
    z = CVAE.reparameterize(mu, logvar)
    # std = exp(0.5 * 2) = e; the report's exp(logvar) would give e^2
    assert z.std().item() == pytest.approx(torch.e, rel=0.01)


def test_checkpoint_roundtrip_with_weights_only(model):
    buffer = io.BytesIO()
    torch.save(to_checkpoint(model), buffer)
    buffer.seek(0)
    restored = load_model(torch.load(buffer, weights_only=True))
    assert restored.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor)


def test_checkpoint_with_a_mismatched_config_is_reported(model):
    checkpoint = to_checkpoint(model)
    checkpoint["config"]["latent_dim"] = 16
    with pytest.raises(ModelFileError, match=r"cvae_model does not match its saved config .*latent_dim': 16"):
        load_model(checkpoint)


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
