"""Nodes of the evaluation pipeline, and the figures of the reporting pipeline it includes."""

import pandas as pd
import pytest
import torch

from cvae_mnist.core.classifier import DigitClassifier
from cvae_mnist.core.inference import reconstruct
from cvae_mnist.core.model import CVAE
from cvae_mnist.datasets import CheckpointDataset
from cvae_mnist.params import ClassifierParams, EvaluationParams, IngestionParams, ModelParams
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist
from cvae_mnist.pipelines.evaluation import create_pipeline, nodes
from cvae_mnist.pipelines.evaluation.nodes import (
    evaluate_generation,
    evaluate_label_swap,
    evaluate_reconstructions,
    get_digit_classifier,
    reconstruct_test_set,
)
from cvae_mnist.pipelines.reporting.nodes import (
    plot_label_swap,
    plot_reconstructions,
    plot_worst_reconstructions,
)

EVALUATION = EvaluationParams(batch_size=16, device="cpu")


@pytest.fixture
def data(tiny_raw):
    return decode_mnist(tiny_raw, IngestionParams())


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CVAE(ModelParams(latent_dim=4, base_channels=4)).eval()


def test_the_test_set_is_reconstructed_once_for_the_metrics_and_the_figures(model, data):
    _, test = data
    reconstructions = reconstruct_test_set(model, test, EVALUATION)
    logits = reconstruct(model, test["images"], test["labels"], 16, torch.device("cpu"))
    torch.testing.assert_close(reconstructions["images"], torch.sigmoid(logits))
    assert reconstructions["bce"].shape == (40,)
    metrics = evaluate_reconstructions(reconstructions, test)
    assert metrics["bce_per_image"].item() == pytest.approx(reconstructions["bce"].mean().item())
    consumers = {n.name for n in create_pipeline().nodes if "test_reconstructions" in n.inputs}
    assert consumers == {
        "evaluation.evaluate_reconstructions_node",
        "reporting.plot_reconstructions_node",
        "reporting.plot_worst_reconstructions_node",
    }
    assert "cvae_model" not in {i for n in create_pipeline().nodes if n.name in consumers for i in n.inputs}


def test_the_worst_reconstructions_are_the_highest_bce(model, data):
    _, test = data
    reconstructions = reconstruct_test_set(model, test, EVALUATION)
    figure = plot_worst_reconstructions(
        reconstructions, test, EVALUATION.model_copy(update={"worst_examples": 3})
    )
    worst = reconstructions["bce"].argsort(descending=True)[:3]
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == [f"{test['labels'][i].item()}: {reconstructions['bce'][i].item():.0f}" for i in worst]
    assert plot_reconstructions(reconstructions, test, EVALUATION).axes


def test_the_label_swap_figure_names_its_columns_and_gives_the_measure(model, data):
    _, test = data
    measured = pd.DataFrame([{"label_swap_accuracy": 0.4567}])
    (axis,) = plot_label_swap(model, test, EVALUATION, measured).axes
    assert [t.get_text() for t in axis.get_xticklabels()] == ["test", *map(str, range(10))]
    assert "45.7% of swapped decodes are read as the new label" in axis.get_title()


def _written(labels: torch.Tensor) -> torch.Tensor:
    """Logits of images that carry ``labels`` as a bright pixel in the first row."""
    logits = torch.full((len(labels), 1, 28, 28), -20.0)
    logits[torch.arange(len(labels)), 0, 0, labels] = 20.0
    return logits


def test_label_swap_accuracy_counts_the_decodes_read_as_the_new_label(model, data, monkeypatch):
    _, test = data
    judge = {"state_dict": DigitClassifier().state_dict()}
    # a judge that reads the bright pixel, and a decoder that writes the label it is given
    monkeypatch.setattr(
        nodes, "predict", lambda classifier, images, device: (images[:, 0, 0, :10].argmax(1), None)
    )
    monkeypatch.setattr(nodes, "decode", lambda cvae, mu, labels, *args: _written(labels))
    assert evaluate_label_swap(model, judge, test, EVALUATION)["label_swap_accuracy"].item() == 1.0
    # a decoder that ignores the label and writes the original digit: no swap is read as asked
    monkeypatch.setattr(nodes, "decode", lambda cvae, mu, labels, *args: _written(test["labels"]))
    assert evaluate_label_swap(model, judge, test, EVALUATION)["label_swap_accuracy"].item() == 0.0
    # one that obeys for labels 0-4 only: the share of swaps whose target is 0-4
    monkeypatch.setattr(
        nodes,
        "decode",
        lambda cvae, mu, labels, *args: _written(torch.where(labels < 5, labels, test["labels"])),
    )
    # image i under label y + 1 + (i mod 9): every other label, equally often
    shifts = 1 + torch.arange(len(test["labels"])) % 9
    targets = (test["labels"] + shifts) % 10
    assert (targets != test["labels"]).all()
    expected = (targets < 5).float().mean().item()
    assert evaluate_label_swap(model, judge, test, EVALUATION)["label_swap_accuracy"].item() == pytest.approx(
        expected
    )


def test_the_digit_classifier_is_reused_only_for_the_same_settings_and_data(data, tmp_path):
    train, test = data
    store = CheckpointDataset(filepath=str(tmp_path / "classifier.pt")).load()
    settings, full = ClassifierParams(epochs=1, seed=0), IngestionParams()

    def judge(train, settings, ingestion=full):
        return get_digit_classifier(store, train, test, settings, ingestion, EVALUATION)

    first = judge(train, settings)
    assert judge(train, settings) is not first  # read back ...
    reused = store.read()
    assert all(
        torch.equal(reused["state_dict"][k], v) for k, v in first["state_dict"].items()
    )  # ... unchanged
    smaller = {key: value[:60] for key, value in train.items()}
    retrained = judge(smaller, settings)
    assert retrained["config"]["n_train"] == 60 and store.read()["config"]["n_train"] == 60
    two_epochs = settings.model_copy(update={"epochs": 2})
    assert judge(smaller, two_epochs)["config"]["epochs"] == 2
    other_seed = judge(smaller, two_epochs.model_copy(update={"seed": 1}))
    assert other_seed["config"]["seed"] == 1 and store.read()["config"]["seed"] == 1


def test_a_classifier_of_a_data_subset_is_not_saved_over_the_shared_one(data, tmp_path):
    train, test = data
    store = CheckpointDataset(filepath=str(tmp_path / "classifier.pt")).load()
    shared = get_digit_classifier(
        store, train, test, ClassifierParams(epochs=1), IngestionParams(), EVALUATION
    )
    subset = {key: value[:60] for key, value in train.items()}
    judged = get_digit_classifier(
        store, subset, test, ClassifierParams(epochs=1), IngestionParams(n_train=60), EVALUATION
    )
    assert judged["config"]["n_train"] == 60  # this run is judged by the classifier of its data
    assert store.read()["config"] == shared["config"]  # the shared one stays


def test_the_top_level_seed_does_not_reach_the_digit_classifier():
    # the judge of generated digits stays the same when a run changes `seed`
    node = next(n for n in create_pipeline().nodes if n.name == "evaluation.get_digit_classifier_node")
    assert "params:seed" not in node.inputs and "params:classifier" in node.inputs


def test_the_digit_classifier_is_kept_per_device_type(data, tmp_path, monkeypatch):
    train, test = data
    store = CheckpointDataset(filepath=str(tmp_path / "classifier.pt")).load()
    first = get_digit_classifier(
        store, train, test, ClassifierParams(epochs=1), IngestionParams(), EVALUATION
    )
    assert first["config"]["device"] == "cpu"
    trained_on = []
    monkeypatch.setattr(nodes, "select_device", lambda name: torch.device("meta"))  # as if on a GPU
    monkeypatch.setattr(
        nodes, "train_classifier", lambda *args: trained_on.append(args[2]) or DigitClassifier()
    )
    monkeypatch.setattr(nodes, "predict", lambda model, images, device: (torch.zeros(len(images)), None))
    again = get_digit_classifier(
        store, train, test, ClassifierParams(epochs=1), IngestionParams(), EVALUATION
    )
    assert trained_on == [torch.device("meta")] and again["config"]["device"] == "meta"


def test_nearest_train_ratio_tells_copies_of_training_digits_from_new_ones(model, data, monkeypatch):
    train, test = data
    judge = {"state_dict": DigitClassifier().state_dict(), "test_accuracy": 0.5}
    params = EvaluationParams(batch_size=16, device="cpu", samples_per_class=4)

    def ratio(images: torch.Tensor) -> float:
        monkeypatch.setattr(nodes, "generate", lambda *args, **kwargs: images)
        return evaluate_generation(model, judge, train, test, params, seed=0)["nearest_train_ratio"].item()

    copies = train["images"][:40]
    assert ratio(copies) == 0.0  # training digits given back
    assert ratio(test["images"][:40]) == pytest.approx(1.0, abs=0.35)  # unseen real digits
    assert ratio(copies + 0.2 * torch.rand(copies.shape, generator=torch.Generator().manual_seed(0))) > 0


def test_the_generated_digits_figure_names_the_prior_they_come_from(model):
    from cvae_mnist.params import PriorParams  # noqa: PLC0415
    from cvae_mnist.pipelines.reporting.nodes import plot_generated_digits  # noqa: PLC0415

    params = EVALUATION.model_copy(update={"generated_per_class": 2})
    (axis,) = plot_generated_digits(model, params, seed=0).axes
    assert "(standard_normal)" in axis.get_title()
    blended = model.with_prior(PriorParams(kind="mixture", components=1, pseudo_inputs=3))
    (axis,) = plot_generated_digits(blended, params, seed=0).axes
    assert "(mixture + 3 pseudo-inputs per class)" in axis.get_title()
