"""Nodes of the evaluation pipeline: the report's metrics and ours (the figures are the
reporting pipeline's)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from cvae_mnist.core.classifier import DigitClassifier, frechet_distance, predict
from cvae_mnist.core.inference import decode, encode, generate, likelihood_terms, reconstruct
from cvae_mnist.core.losses import reconstruction_loss
from cvae_mnist.core.metrics import mse_per_image, nearest_distances, psnr_per_image, ssim_per_image
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.runtime import select_device
from cvae_mnist.core.schema import Split
from cvae_mnist.engine.checkpoints import CheckpointStore
from cvae_mnist.engine.recipe import train_classifier
from cvae_mnist.params import DIGITS, ClassifierParams, EvaluationParams, IngestionParams

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("n_images", "bce_per_image", "mse_per_image", "ssim", "psnr")  # the report's, in its order
LIKELIHOOD_COLUMNS = ("kl_per_image", "neg_elbo_per_image", "iw_nll", "iw_samples")
GENERATION_COLUMNS = ("cond_accuracy", "fid", "fid_reference", "classifier_accuracy", "nearest_train_ratio")
NEAREST_SAMPLE = 1000  # generated and test digits whose nearest training digit is found
SWAP_COLUMNS = ("label_swap_accuracy",)


def reconstruct_test_set(cvae_model: CVAE, mnist_test: Split, evaluation: EvaluationParams) -> Split:
    """Each test image reconstructed from its posterior mean ``mu`` (not a draw of z, so that the
    metrics do not depend on one): ``{"images": [N, 1, 28, 28] in [0, 1], "bce": [N]}``, the BCE
    in nats summed over pixels."""
    images = mnist_test["images"]
    device = select_device(evaluation.device)
    logits = reconstruct(
        cvae_model, images, mnist_test["labels"], evaluation.batch_size, device, "reconstructing"
    )
    return {"images": torch.sigmoid(logits), "bce": reconstruction_loss(logits, images, "bce")}


def evaluate_reconstructions(test_reconstructions: Split, mnist_test: Split) -> pd.DataFrame:
    """The report's five columns over the test set: BCE and MSE summed over pixels and
    averaged over images; SSIM and PSNR (scikit-image, ``data_range=1``) averaged over images."""
    real, recon = mnist_test["images"][:, 0].numpy(), test_reconstructions["images"][:, 0].numpy()
    row = {
        "n_images": len(real),
        "bce_per_image": float(test_reconstructions["bce"].numpy().mean()),
        "mse_per_image": float(mse_per_image(real, recon).mean()),
        "ssim": float(ssim_per_image(real, recon).mean()),
        "psnr": float(psnr_per_image(real, recon).mean()),
    }
    return pd.DataFrame([row], columns=list(METRIC_COLUMNS))


def evaluate_likelihood(
    cvae_model: CVAE, mnist_test: Split, evaluation: EvaluationParams, seed: int
) -> pd.DataFrame:
    """Likelihood metrics in nats per image, from ``evaluation.iw_samples`` (K) draws of z per
    image: ``kl_per_image``, ``neg_elbo_per_image`` (reconstruction averaged over the draws + KL,
    beta = 1), ``iw_nll`` (the importance-weighted estimate of -log p(x | y)) and ``iw_samples``."""
    terms = likelihood_terms(
        cvae_model,
        mnist_test["images"],
        mnist_test["labels"],
        evaluation.iw_samples,
        evaluation.batch_size,
        select_device(evaluation.device),
        seed,
        f"likelihood, {evaluation.iw_samples} draws per image",
    )
    row = {
        "kl_per_image": float(terms["kl"].mean()),
        "neg_elbo_per_image": float(terms["neg_elbo"].mean()),
        "iw_nll": float(terms["iw_nll"].mean()),
        "iw_samples": evaluation.iw_samples,
    }
    return pd.DataFrame([row], columns=list(LIKELIHOOD_COLUMNS))


def get_digit_classifier(
    digit_classifier: CheckpointStore,
    mnist_train: Split,
    mnist_test: Split,
    classifier: ClassifierParams,
    data_ingestion: IngestionParams,
    evaluation: EvaluationParams,
) -> dict[str, Any]:
    """The judge of generated digits, ``{"config", "state_dict", "test_accuracy"}``: the saved
    one if trained with these parameters on as many images on this device type (GPU and CPU
    judges differ in their last digits), else a new one, saved only if it learned from all
    training images: trained once (50 s on a CPU) and shared by every run, not retrained in each."""
    device = select_device(evaluation.device)
    config = {**classifier.model_dump(), "n_train": len(mnist_train["labels"]), "device": device.type}
    if digit_classifier.exists() and (saved := digit_classifier.read()).get("config") == config:
        logger.info("Reusing the digit classifier in %s", digit_classifier.filepath)
        return saved
    model = train_classifier(mnist_train, classifier, device)
    predicted, _ = predict(model, mnist_test["images"], device=device)
    accuracy = float((predicted == mnist_test["labels"]).float().mean())
    logger.info("Digit classifier trained: %.2f%% accuracy on the test set", 100 * accuracy)
    saved = {"config": config, "state_dict": model.state_dict(), "test_accuracy": accuracy}
    if data_ingestion.n_train is None:
        digit_classifier.write(saved)
    else:
        logger.warning(
            "This digit classifier learned from a subset (data_ingestion.n_train): it is not saved"
        )
    return saved


def evaluate_generation(
    cvae_model: CVAE,
    trained_digit_classifier: dict[str, Any],
    mnist_train: Split,
    mnist_test: Split,
    evaluation: EvaluationParams,
    seed: int,
) -> pd.DataFrame:
    """How well the model draws the digit asked for, and how real its digits look, from
    ``evaluation.samples_per_class`` digits per class (``inference.generate``, as every generator):
    ``cond_accuracy`` (the share the judge reads as the digit asked for); ``fid`` and
    ``fid_reference`` (Fréchet distance of the judge's features, generated or training vs test
    images: the latter is the floor); ``classifier_accuracy``; ``nearest_train_ratio`` (generated
    digits' median distance to their nearest training digit over the same for test digits; near
    0: copies, which ``fid`` does not see). The FID reference is the training set's first
    test-set-sized slice."""
    judge, device = _judge(trained_digit_classifier), select_device(evaluation.device)
    requested = torch.arange(cvae_model.config.num_classes).repeat_interleave(evaluation.samples_per_class)
    generated = generate(cvae_model, requested, seed, device, description="generating")
    predicted, generated_features = predict(judge, generated, device=device)
    _, test_features = predict(judge, mnist_test["images"], device=device)
    _, train_features = predict(judge, mnist_train["images"][: len(mnist_test["images"])], device=device)
    row = {
        "cond_accuracy": float((predicted == requested).float().mean()),
        "fid": frechet_distance(generated_features.numpy(), test_features.numpy()),
        "fid_reference": frechet_distance(train_features.numpy(), test_features.numpy()),
        "classifier_accuracy": trained_digit_classifier["test_accuracy"],
        "nearest_train_ratio": _novelty(generated, mnist_test["images"], mnist_train["images"], device),
    }
    return pd.DataFrame([row], columns=list(GENERATION_COLUMNS))


def _novelty(generated: torch.Tensor, test: torch.Tensor, train: torch.Tensor, device: torch.device) -> float:
    """Median nearest-training-digit distance of generated digits (every class, evenly) over
    that of test digits."""
    train = train.to(device)
    ours = nearest_distances(generated[:: max(1, len(generated) // NEAREST_SAMPLE)].to(device), train)
    theirs = nearest_distances(test[:NEAREST_SAMPLE].to(device), train).median()
    return float(ours.median() / theirs) if theirs > 0 else float("nan")  # test digits all in train


def evaluate_label_swap(
    cvae_model: CVAE,
    trained_digit_classifier: dict[str, Any],
    mnist_test: Split,
    evaluation: EvaluationParams,
) -> pd.DataFrame:
    """Whether the label decides the digit: the share of ``decode(mu(x, y), t)``, ``t != y``,
    that the judge reads as ``t`` (near ``1 / num_classes`` or below when the decoder ignores the
    label). Image ``i`` is decoded under ``t = (y + 1 + i mod 9) mod 10``: each of the nine other
    labels equally often, one decode per image. On the default model this gave 0.9625, as did
    every image under all nine labels at 9 times the cost (docs/results.md)."""
    judge, device, k = _judge(trained_digit_classifier), select_device(evaluation.device), DIGITS
    images, labels = mnist_test["images"], mnist_test["labels"]
    mu, _ = encode(cvae_model, images, labels, evaluation.batch_size, device, "label swaps")
    target = (labels + 1 + torch.arange(len(labels)) % (k - 1)) % k
    swapped = torch.sigmoid(decode(cvae_model, mu, target, evaluation.batch_size, device))
    hits = int((predict(judge, swapped, device=device)[0] == target).sum())
    return pd.DataFrame([{"label_swap_accuracy": hits / len(labels)}], columns=list(SWAP_COLUMNS))


def _judge(trained_digit_classifier: dict[str, Any]) -> DigitClassifier:
    judge = DigitClassifier()
    judge.load_state_dict(trained_digit_classifier["state_dict"])
    return judge


def assemble_metrics(*tables: pd.DataFrame) -> pd.DataFrame:
    """The metrics table in one row: the report's five columns first, then ours."""
    return pd.concat(tables, axis=1)


def metrics_to_mlflow(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The metrics table's row as MLflow metrics, ``{column: {"step": 0, "value": value}}``."""
    (row,) = metrics.to_dict(orient="records")
    return {key: {"step": 0, "value": float(value)} for key, value in row.items()}
