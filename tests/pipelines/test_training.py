"""Nodes of the training pipeline."""

import pytest
import torch

from cvae_mnist.errors import DataError
from cvae_mnist.model import CVAE
from cvae_mnist.params import IngestionParams, ModelParams, TrainingParams
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist
from cvae_mnist.pipelines.training.nodes import fit_prior, history_to_mlflow_metrics

TRAINING = TrainingParams(device="cpu")


@pytest.fixture
def train_set(tiny_raw):
    train, _ = decode_mnist(tiny_raw, IngestionParams())
    return train


def _model(**changes) -> CVAE:
    torch.manual_seed(0)
    return CVAE(ModelParams(latent_dim=4, base_channels=4, **changes))


def test_fit_prior_fits_a_mixture_per_class_and_leaves_its_input_alone(train_set):
    trained = _model(prior="fitted", prior_components=2)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    fitted = fit_prior(trained, train_set, TRAINING, seed=0)
    state = fitted.state_dict()
    assert state["prior_weights"].shape == (10, 2)
    torch.testing.assert_close(state["prior_weights"].sum(1), torch.ones(10))
    assert not torch.equal(state["prior_mean"], torch.zeros_like(state["prior_mean"]))
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in before.items())  # a new model
    assert all(torch.equal(state[k], v) for k, v in before.items() if not k.startswith("prior_"))


def test_fit_prior_keeps_a_standard_normal_prior(train_set):
    plain = _model(prior="standard_normal")
    assert fit_prior(plain, train_set, TRAINING, seed=0) is plain


def test_fit_prior_with_too_few_images_of_a_class_says_so(train_set):
    few = {key: value[:15] for key, value in train_set.items()}  # classes 5-9 once each
    with pytest.raises(
        DataError, match=r"Cannot fit the prior \(model.prior = fitted\): fitting 2 Gaussians to class 5"
    ):
        fit_prior(_model(prior="fitted", prior_components=2), few, TRAINING, seed=0)


def test_the_history_becomes_one_mlflow_step_per_epoch():
    history = {"epoch": [1, 2], "seconds": [3.0, 2.5], "test_kl": [4.0, 3.5]}
    assert history_to_mlflow_metrics(history) == {
        "seconds": [{"step": 1, "value": 3.0}, {"step": 2, "value": 2.5}],
        "test_kl": [{"step": 1, "value": 4.0}, {"step": 2, "value": 3.5}],
    }
