"""The training aids that make the decoder use the label: gradients, the objective, the saved model."""

import pytest
import torch
import torch.nn.functional as F

from cvae_mnist.core.adversary import LabelAidedCVAE
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.runtime import World
from cvae_mnist.engine.recipe import CVAEObjective, fit_cvae, resume_settings
from cvae_mnist.params import IngestionParams, ModelParams, TrainingParams
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist

SMALL = ModelParams(latent_dim=6, base_channels=4)


def _aided(adversary: float = 2.0, swap: float = 1.0, fraction: float = 0.5) -> LabelAidedCVAE:
    torch.manual_seed(0)
    return LabelAidedCVAE(CVAE(SMALL), adversary, swap, fraction)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_adversary_learns_the_label_and_the_encoder_is_pushed_the_other_way():
    aided, x, y = _aided(swap=0.0), torch.rand(8, 1, 28, 28), torch.arange(8)
    torch.manual_seed(1)
    reversed_grads = _grads(aided, aided(x, y)[3]["adversary"])
    # the same loss without the reversal: the adversary's own gradient is the same,
    # the encoder's is -weight times what it gets
    mu, _ = aided.cvae.encode(x, y)
    plain = _grads(aided, F.cross_entropy(aided.adversary(mu), y))
    for name, grad in plain.items():
        expected = grad if name.startswith("adversary.") else -2.0 * grad
        torch.testing.assert_close(reversed_grads[name], expected)
    assert any(name.startswith("cvae.fc_mu") for name in reversed_grads)
    assert not any(name.startswith("cvae.decoder") for name in reversed_grads)  # mu, not the decoder


def test_the_swap_trains_the_decoder_and_not_the_critic_which_learns_from_real_digits_alone():
    aided, x, y = _aided(adversary=0.0), torch.rand(8, 1, 28, 28), torch.arange(8)
    losses = aided(x, y)[3]
    assert set(losses) == {"critic", "swap"}
    swap = _grads(aided, losses["swap"])
    assert not any(name.startswith("critic.") for name in swap)
    assert any(name.startswith("cvae.upconv") or name.startswith("cvae.decoder") for name in swap)
    critic = _grads(aided, aided(x, y)[3]["critic"])
    assert critic and all(name.startswith("critic.") for name in critic)


def test_the_objective_adds_the_aids_and_weights_the_swap():
    aided, x, y = _aided(), torch.rand(8, 1, 28, 28), torch.arange(8)
    objective = CVAEObjective("bce", 0.5, swap_weight=3.0)
    torch.manual_seed(2)
    terms = objective(aided, x, y, step=0)
    expected = (
        terms["reconstruction"]
        + 0.5 * terms["kl"]
        + terms["adversary"]
        + terms["critic"]
        + 3.0 * terms["swap"]
    )
    torch.testing.assert_close(terms["loss"], expected)
    plain = CVAEObjective("bce", 0.5)(aided.cvae, x, y, step=0)
    assert set(plain) == {"loss", "reconstruction", "kl"}


def test_two_processes_compute_the_swap_terms_of_one_process_with_the_global_batch():
    torch.manual_seed(0)
    cvae = CVAE(SMALL)
    one = LabelAidedCVAE(cvae, 0.0, 1.0, 0.125)
    ranks = [LabelAidedCVAE(cvae, 0.0, 1.0, 0.125, world=World(r, 2)) for r in (0, 1)]
    for rank in ranks:
        rank.critic.load_state_dict(one.critic.state_dict())
    x, y, noise = torch.rand(64, 1, 28, 28), torch.arange(64) % 10, torch.randn(64, 6)
    torch.manual_seed(5)
    single = one(x, y, noise)[3]
    shares = []
    for rank in ranks:
        torch.manual_seed(5)  # every rank draws the same numbers
        part = slice(rank.world.rank * 32, (rank.world.rank + 1) * 32)
        shares.append(rank(x[part], y[part], noise[part])[3])
    for term in ("critic", "swap"):  # DDP averages the ranks: their mean is the one process's term
        torch.testing.assert_close((shares[0][term] + shares[1][term]) / 2, single[term])
    assert shares[1]["swap"].item() == 0  # the 8 swapped images of the global batch are all rank 0's


@pytest.mark.parametrize(("adversary", "swap"), [(1.0, 0.0), (0.0, 1.0)])
def test_each_aid_is_built_only_when_weighted(adversary, swap):
    aided = _aided(adversary, swap)
    assert (aided.adversary is not None, aided.critic is not None) == (adversary > 0, swap > 0)


def test_a_checkpoint_of_other_aids_cannot_be_resumed():
    base = TrainingParams(swap_weight=0.0)
    settings = resume_settings(SMALL, base, seed=1)
    other = resume_settings(SMALL, base.model_copy(update={"swap_weight": 1.0}), seed=1)
    assert settings["training.swap_weight"] == 0.0 and other["training.swap_weight"] == 1.0
    assert {"training.adversary_weight", "training.swap_fraction"} <= set(settings)


def test_training_with_the_aids_saves_the_cvae_alone_and_records_their_losses(tiny_raw):
    train, test = decode_mnist(tiny_raw, IngestionParams())
    params = TrainingParams(epochs=2, batch_size=32, device="cpu", adversary_weight=1.0, swap_weight=1.0)
    model, history = fit_cvae(SMALL, train, test, params, seed=0)
    assert type(model) is CVAE
    assert not any(key.startswith(("adversary", "critic", "cvae.")) for key in model.state_dict())
    for term in ("adversary", "critic", "swap"):
        assert len(history[f"train_{term}"]) == 2 and len(history[f"test_{term}"]) == 2
