import numpy as np
import pytest
import torch

from cvae_mnist.core.classifier import DigitClassifier, frechet_distance, predict
from cvae_mnist.engine.recipe import train_classifier
from cvae_mnist.params import ClassifierParams
from mnist_fixtures import synthetic_digits


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    features = np.random.default_rng(0).normal(size=(2000, 4))
    shifted = features + np.array([3.0, 0.0, 4.0, 0.0])  # same covariance, means 5 apart
    assert frechet_distance(features, shifted) == pytest.approx(25.0, rel=1e-6)


def test_frechet_distance_sees_a_change_of_spread():
    rng = np.random.default_rng(0)
    narrow, wide = rng.normal(size=(5000, 2)), 2 * rng.normal(size=(5000, 2))
    # N(0, I) vs N(0, 4I) in 2-D: Tr(I + 4I - 2 * 2I) = 2
    assert frechet_distance(narrow, wide) == pytest.approx(2.0, rel=0.05)


def test_classifier_learns_the_synthetic_digits():
    images, labels = synthetic_digits(400, seed=0)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels).long()
    model = train_classifier(
        {"images": x, "labels": y}, ClassifierParams(epochs=3, batch_size=32, lr=1e-3, seed=0)
    )
    test_images, test_labels = synthetic_digits(100, seed=1)
    predicted, features = predict(
        model, torch.from_numpy(test_images).float().div(255).unsqueeze(1), batch_size=30
    )
    assert features.shape == (100, 128)
    assert (predicted == torch.from_numpy(test_labels).long()).float().mean() > 0.9
    assert isinstance(model, DigitClassifier)
