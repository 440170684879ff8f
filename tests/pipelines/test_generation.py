from types import SimpleNamespace

import pytest
import torch
from matplotlib.figure import Figure

from cvae_mnist.core.model import CVAE
from cvae_mnist.glue.saving import to_checkpoint, write_tensors
from cvae_mnist.glue.serving import WEIGHTS, CVAEGenerator, GenerationRequest
from cvae_mnist.params import GenerationParams, ModelParams
from cvae_mnist.pipelines.generation.nodes import generate_digits, plot_generated


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CVAE(ModelParams(latent_dim=4, base_channels=4)).eval()


def test_one_digit(model):
    generated = generate_digits(model, GenerationParams(digit=6, n_samples=5))
    assert generated["images"].shape == (5, 28, 28)
    assert generated["labels"].tolist() == [6] * 5
    assert 0 <= generated["images"].min() and generated["images"].max() <= 1


def test_all_digits_when_none_is_given(model):
    generated = generate_digits(model, GenerationParams(n_samples=2))
    assert generated["labels"].tolist() == [d for d in range(10) for _ in range(2)]
    assert isinstance(plot_generated(generated), Figure)


def test_same_seed_same_images(model):
    def images(seed):
        return generate_digits(model, GenerationParams(digit=3, n_samples=4, seed=seed))["images"]

    assert torch.equal(images(7), images(7))
    assert not torch.equal(images(7), images(8))


def test_the_served_model_generates_through_the_same_code_path(model, tmp_path):
    write_tensors(to_checkpoint(model), tmp_path / "cvae.pt")
    generator = CVAEGenerator()
    generator.load_context(SimpleNamespace(artifacts={WEIGHTS: str(tmp_path / "cvae.pt")}))
    answer = generator.predict([GenerationRequest(digit=6, n_samples=5, seed=0)])
    expected = generate_digits(model, GenerationParams(digit=6, n_samples=5, seed=0))["images"]
    assert torch.equal(torch.tensor(answer[0]), expected)
