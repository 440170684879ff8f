"""Nodes of the training pipeline."""

import copy
import math

import pytest
import torch

from cvae_mnist.core.model import CVAE
from cvae_mnist.errors import DataError
from cvae_mnist.params import IngestionParams, ModelParams, PriorParams, TrainingParams
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist
from cvae_mnist.pipelines.training.nodes import fit_prior

TRAINING = TrainingParams(device="cpu")


@pytest.fixture
def train_set(tiny_raw):
    train, _ = decode_mnist(tiny_raw, IngestionParams())
    return train


def _model(**changes) -> CVAE:
    torch.manual_seed(0)
    return CVAE(ModelParams(latent_dim=4, base_channels=4, **changes))


@pytest.mark.parametrize("kind", ["mixture", "flow"])
def test_fit_prior_fits_the_prior_and_leaves_its_input_alone(train_set, kind):
    trained = _model()
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    prior = PriorParams(kind=kind, components=2, flow_transforms=1, flow_hidden=8, epochs=2, batch_size=32)
    torch.manual_seed(123)  # the flow's initial weights
    fitted, curve = fit_prior(trained, train_set, prior, TRAINING, seed=0)
    state = fitted.state_dict()
    assert fitted.prior_config == prior
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in before.items())  # a new model
    assert all(torch.equal(state[k], v) for k, v in before.items())  # the network itself unchanged
    assert [point["step"] for point in curve["nll"]] == ([1, 2] if kind == "flow" else list(range(1, 11)))
    if kind == "mixture":
        assert state["prior.weights"].shape == (10, 2)
        torch.testing.assert_close(state["prior.weights"].sum(1), torch.ones(10))
        assert not torch.equal(state["prior.mean"], torch.zeros_like(state["prior.mean"]))
    else:  # trained: its weights moved (that it learns a density: tests/test_prior.py)
        torch.manual_seed(123)
        start = copy.deepcopy(trained).with_prior(prior).prior.state_dict()  # the same initial weights
        flow = [k for k in start if k.startswith("flow.") and start[k].is_floating_point()]
        assert flow and all(
            not torch.equal(fitted.prior.state_dict()[k], start[k]) for k in flow if "weight" in k
        )
        assert all(math.isfinite(point["value"]) for point in curve["nll"])


def test_fit_prior_gives_a_standard_normal_prior_as_it_is(train_set):
    fitted, curve = fit_prior(_model(), train_set, PriorParams(kind="standard_normal"), TRAINING, seed=0)
    assert fitted.prior_config.kind == "standard_normal" and curve == {}
    assert not list(fitted.prior.parameters()) and not list(fitted.prior.buffers())


def test_fit_prior_with_too_few_images_of_a_class_says_so(train_set):
    few = {key: value[:15] for key, value in train_set.items()}  # classes 5-9 once each
    with pytest.raises(
        DataError, match=r"Cannot fit the prior \(prior.kind = mixture\): fitting 2 Gaussians to class 5"
    ):
        fit_prior(_model(), few, PriorParams(kind="mixture", components=2), TRAINING, seed=0)
