import pytest
import torch
from torch.distributions import Bernoulli, Normal

from cvae_mnist.core.inference import generate, likelihood_terms, reconstruct
from cvae_mnist.core.losses import kl_divergence
from cvae_mnist.core.model import CVAE
from cvae_mnist.datasets import CVAEDataset
from cvae_mnist.errors import ModelFileError
from cvae_mnist.glue.saving import from_checkpoint, to_checkpoint
from cvae_mnist.params import ModelParams, PriorParams
from mnist_fixtures import raises_user_error

PLAIN = {
    "conditioning": "one_hot",
    "normalization": "none",
    "residual_blocks": 0,
    "decoder_conditioning": "input",
}


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
    kept = dataset.load()  # the model this dataset saved, copied, not read again
    assert loads == [] and kept is not model and torch.equal(kept.fc_mu.weight, model.fc_mu.weight)
    restored = CVAEDataset(filepath=str(tmp_path / "cvae.pt")).load()  # another run reads the file
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


def test_every_stage_conditioning_adds_a_film_after_each_decoder_relu_starting_as_the_identity():
    torch.manual_seed(0)
    film = CVAE(config(decoder_conditioning="every_stage"))
    assert sorted(film.film) == [
        "relu0",
        "uprelu1",
    ]  # two_stage: after the linear layer and the first up-stage
    assert [f.project.out_features for f in film.film.values()] == [
        2 * 8,
        2 * 4,
    ]  # scale and shift per channel
    plain = CVAE(config())
    plain.load_state_dict({k: v for k, v in film.state_dict().items() if not k.startswith("film.")})
    z, labels = torch.randn(4, 8), torch.tensor([0, 3, 3, 9])
    torch.testing.assert_close(
        film.decode(z, labels), plain.decode(z, labels)
    )  # zero-initialised: the identity
    with torch.no_grad():
        film.film["uprelu1"].project.bias[:4] = 1.0  # gamma = 1: the features doubled
    assert not torch.allclose(film.decode(z, labels), plain.decode(z, labels))
    with torch.no_grad():
        film.film["uprelu1"].project.bias.zero_()
        film.film["uprelu1"].project.weight[4:, 3] = 0.5  # a shift for label 3 only
    changed = ~torch.isclose(film.decode(z, labels), plain.decode(z, labels)).flatten(1).all(1)
    assert changed.tolist() == [False, True, True, False]


@pytest.mark.parametrize(
    "prior", [PriorParams(kind="flow", flow_transforms=2, flow_hidden=16), PriorParams(components=3)]
)
def test_a_saved_model_is_rebuilt_with_its_own_prior(tmp_path, prior):
    model = CVAE(ModelParams(latent_dim=4, base_channels=4), prior)
    CVAEDataset(filepath=str(tmp_path / "cvae.pt")).save(model)
    restored = CVAEDataset(filepath=str(tmp_path / "cvae.pt")).load()
    assert restored.prior_config == prior  # not the default prior of the parameters
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name


def test_a_model_saved_before_priors_were_kept_loads_with_the_standard_normal_it_had():
    model = CVAE(ModelParams(latent_dim=4, base_channels=4))
    checkpoint = to_checkpoint(model)
    del checkpoint["prior"]  # as written before the prior's settings were kept in the file
    restored = from_checkpoint(checkpoint, "cvae.pt")  # it was refused, as a mixture's buffers were missing
    assert restored.prior_config == model.prior_config and restored.prior_config.kind == "standard_normal"
