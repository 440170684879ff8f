import math

import pytest
import torch
import torch.nn.functional as F

from cvae_mnist.core.losses import cvae_loss, kl_divergence, reconstruction_loss


def test_bce_matches_the_formula_by_hand():
    # two pixels: target 1 with p = sigmoid(0) = 0.5, target 0 with p = sigmoid(ln 3) = 0.75
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([[1.0, 0.0]])
    expected = -math.log(0.5) - math.log(1 - 0.75)
    assert reconstruction_loss(logits, target, "bce").item() == pytest.approx(expected, rel=1e-6)


def test_bce_from_logits_is_the_reports_sigmoid_then_bce():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    reports = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none")
    assert torch.allclose(reconstruction_loss(logits, target, "bce"), reports.flatten(1).sum(1), rtol=1e-5)


def test_mse_is_summed_over_pixels():
    logits = torch.zeros(2, 1, 2, 2)  # sigmoid = 0.5 everywhere
    target = torch.ones(2, 1, 2, 2)
    assert reconstruction_loss(logits, target, "mse").tolist() == [1.0, 1.0]  # 4 * 0.25


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown reconstruction loss 'l1'"):
        reconstruction_loss(torch.zeros(1, 1), torch.zeros(1, 1), "l1")


def test_kl_is_zero_at_the_prior_and_matches_by_hand():
    assert kl_divergence(torch.zeros(1, 5), torch.zeros(1, 5)).item() == 0.0
    # one dimension, mu = 1, var = e: 0.5 * (var + mu^2 - 1 - log var) = 0.5 * (e - 1)
    mu, logvar = torch.tensor([[1.0]]), torch.tensor([[1.0]])
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 * (math.e - 1), rel=1e-6)


def test_cvae_loss_is_reconstruction_plus_beta_kl_averaged_over_images():
    logits = torch.zeros(2, 1, 1, 1)
    target = torch.ones(2, 1, 1, 1)
    mu, logvar = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
    terms = cvae_loss(logits, target, mu, logvar, beta=0.5)
    loss, recon, kl = terms["loss"], terms["reconstruction"], terms["kl"]
    assert recon.item() == pytest.approx(math.log(2))
    assert kl.item() == pytest.approx((0.5 + 4.5) / 2)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * 2.5)
