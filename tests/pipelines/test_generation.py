import pytest
import torch
from matplotlib.figure import Figure

from cvae_mnist.datasets import CheckpointDataset
from cvae_mnist.errors import ParameterError
from cvae_mnist.model import CVAE, CVAEConfig, to_checkpoint
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist
from cvae_mnist.pipelines.evaluation import create_pipeline as create_evaluation_pipeline
from cvae_mnist.pipelines.evaluation.nodes import get_digit_classifier
from cvae_mnist.pipelines.generation.nodes import generate_digits, plot_generated
from cvae_mnist.pipelines.training.nodes import build_generator
from cvae_mnist.serving import GenerationRequest


@pytest.fixture
def checkpoint():
    torch.manual_seed(0)
    return to_checkpoint(CVAE(CVAEConfig(latent_dim=4, base_channels=4)))


def test_one_digit(checkpoint):
    generated = generate_digits(checkpoint, {"digit": 6, "n_samples": 5, "seed": 0})
    assert generated["images"].shape == (5, 28, 28)
    assert generated["labels"].tolist() == [6] * 5
    assert 0 <= generated["images"].min() and generated["images"].max() <= 1


def test_all_digits_when_none_is_given(checkpoint):
    generated = generate_digits(checkpoint, {"n_samples": 2})
    assert generated["labels"].tolist() == [d for d in range(10) for _ in range(2)]
    assert isinstance(plot_generated(generated), Figure)


def test_same_seed_same_images(checkpoint):
    first = generate_digits(checkpoint, {"digit": 3, "n_samples": 4, "seed": 7})["images"]
    assert torch.equal(first, generate_digits(checkpoint, {"digit": 3, "n_samples": 4, "seed": 7})["images"])
    assert not torch.equal(
        first, generate_digits(checkpoint, {"digit": 3, "n_samples": 4, "seed": 8})["images"]
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"digit": 10},
            "Parameter generation.digit = 10 is invalid: it must be null or an integer from 0 to 9.",
        ),
        ({"n_samples": 0}, "Parameter generation.n_samples = 0 is invalid: it must be a positive integer."),
        ({"seed": -1}, "Parameter generation.seed = -1 is invalid: it must be an integer >= 0."),
    ],
)
def test_bad_generation_parameters(checkpoint, params, message):
    with pytest.raises(ParameterError) as error:
        generate_digits(checkpoint, params)
    assert message in str(error.value)


def test_the_served_model_generates_through_the_same_code_path(checkpoint):
    generator = build_generator(checkpoint)
    answer = generator.predict([GenerationRequest(digit=6, n_samples=5, seed=0)])
    expected = generate_digits(checkpoint, {"digit": 6, "n_samples": 5, "seed": 0})["images"]
    assert torch.equal(torch.tensor(answer[0]), expected)


def test_the_digit_classifier_is_reused_only_for_the_same_settings_and_data(tiny_raw, tmp_path):
    train, test = decode_mnist(tiny_raw, {})
    store = CheckpointDataset(filepath=str(tmp_path / "classifier.pt")).load()
    first = get_digit_classifier(store, train, test, {"epochs": 1, "seed": 0})
    assert get_digit_classifier(store, train, test, {"epochs": 1, "seed": 0}) is not first  # read back ...
    reused = store.read()
    assert all(
        torch.equal(reused["state_dict"][k], v) for k, v in first["state_dict"].items()
    )  # ... unchanged
    smaller = {key: value[:60] for key, value in train.items()}
    retrained = get_digit_classifier(store, smaller, test, {"epochs": 1, "seed": 0})
    assert retrained["config"]["n_train"] == 60 and store.read()["config"]["n_train"] == 60
    assert get_digit_classifier(store, smaller, test, {"epochs": 2, "seed": 0})["config"]["epochs"] == 2
    other_seed = get_digit_classifier(store, smaller, test, {"epochs": 2, "seed": 1})
    assert other_seed["config"]["seed"] == 1 and store.read()["config"]["seed"] == 1


def test_the_top_level_seed_does_not_reach_the_digit_classifier():
    # the judge of generated digits stays the same when a run changes `seed`
    node = next(n for n in create_evaluation_pipeline().nodes if n.name == "get_digit_classifier_node")
    assert "params:seed" not in node.inputs and "params:classifier" in node.inputs
