"""The three pipelines end to end on tiny synthetic IDX files."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from cvae_mnist.datasets import CheckpointDataset
from cvae_mnist.params import (
    ClassifierParams,
    EvaluationParams,
    IngestionParams,
    ModelParams,
    PriorParams,
    TrainingParams,
)
from cvae_mnist.pipelines import data_ingestion, evaluation, training
from mnist_fixtures import TINY_MODEL, TINY_PRIOR, TINY_TRAINING, make_test_project, run_session

METRIC_COLUMNS = ["n_images", "bce_per_image", "mse_per_image", "ssim", "psnr"]  # the report's, first
OUR_COLUMNS = [
    "kl_per_image",
    "neg_elbo_per_image",
    "iw_nll",
    "iw_samples",
    "cond_accuracy",
    "fid",
    "fid_reference",
    "classifier_accuracy",
    "nearest_train_ratio",
    "label_swap_accuracy",
]

FIGURES = (
    "reconstructions",
    "generated_digits",
    "training_curves",
    "latent_interpolation",
    "label_swap",
    "worst_reconstructions",
)


def test_pipelines_run_on_an_in_memory_catalog(tiny_raw, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cvae_mnist.engine.trainer")
    catalog = DataCatalog()
    catalog["mnist_raw"] = tiny_raw
    catalog["training_checkpoint"] = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
    catalog["digit_classifier"] = CheckpointDataset(filepath=str(tmp_path / "classifier.pt")).load()
    catalog["params:classifier"] = ClassifierParams(epochs=1)
    catalog["params:data_ingestion"] = IngestionParams(n_train=100)
    catalog["params:model"] = ModelParams(**TINY_MODEL)
    catalog["params:prior"] = PriorParams(**TINY_PRIOR)
    catalog["params:training"] = TrainingParams(**TINY_TRAINING)
    catalog["params:evaluation"] = EvaluationParams(batch_size=16, device="cpu", samples_per_class=20)
    catalog["params:seed"] = 3
    pipeline = data_ingestion.create_pipeline() + training.create_pipeline() + evaluation.create_pipeline()
    outputs = SequentialRunner().run(pipeline, catalog)

    # intermediate datasets are released once consumed: check the pipeline's outputs
    assert set(outputs) == {
        "prior_metrics",
        "test_metrics",
        "cvae_generator",
        *(f"{name}_figure" for name in FIGURES),
    }
    test_metrics = catalog["test_metrics"].load()
    assert set(test_metrics) == set(METRIC_COLUMNS + OUR_COLUMNS)
    assert test_metrics["n_images"] == {"step": 0, "value": 40.0}
    # each epoch's values leave the engine as they come, on its log records (MLflow shows them live)
    epochs = [r for r in caplog.records if getattr(r, "series", None) == "training"]
    assert [r.step for r in epochs] == [1, 2] and epochs[1].epoch_values["train_loss"] < epochs[
        0
    ].epoch_values["train_loss"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_test_project(tmp_path_factory.mktemp("project"))
    run_session(project)
    return project


def test_kedro_run_writes_metrics_and_figures(project):
    metrics = pd.read_csv(project / "data" / "08_reporting" / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS + OUR_COLUMNS
    assert metrics["iw_samples"].item() == 50
    # the importance-weighted bound is at least as tight as the ELBO
    assert 0 < metrics["iw_nll"].item() <= metrics["neg_elbo_per_image"].item()
    assert 0 <= metrics["cond_accuracy"].item() <= 1 and 0 <= metrics["classifier_accuracy"].item() <= 1
    assert 0 <= metrics["label_swap_accuracy"].item() <= 1
    assert metrics["fid"].item() >= 0 and metrics["fid_reference"].item() >= 0
    assert (project / "data" / "06_models" / "digit_classifier.pt").exists()
    assert metrics["n_images"].item() == 40
    assert 0 < metrics["ssim"].item() < 1 and 0 < metrics["psnr"].item() < 100
    for figure in FIGURES:
        assert (project / "data" / "08_reporting" / f"{figure}.png").stat().st_size > 1000
    assert (project / "data" / "06_models" / "cvae.pt").exists()


def test_kedro_run_is_tracked_in_mlflow(project):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cvae_mnist"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "1" and run.data.params["training.epochs"] == "2"
    assert [
        m.value for m in client.get_metric_history(run.info.run_id, "training.train_loss")
    ] == pytest.approx(
        pd.read_json(project / "data" / "08_reporting" / "training_history.json")["train_loss"].tolist()
    )
    assert "test.ssim" in run.data.metrics
    # logged as each epoch ended, not with the metrics at the end of the run
    first_epoch = client.get_metric_history(run.info.run_id, "training.train_loss")[0]
    assert first_epoch.timestamp < client.get_metric_history(run.info.run_id, "test.ssim")[0].timestamp
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {"reconstructions.png", "generated_digits.png", "training_curves.png"}
    assert {"metrics.csv", "node_seconds.json", *figures} <= artifacts


def test_evaluation_alone_rewrites_the_same_metrics(project):
    metrics_file = project / "data" / "08_reporting" / "metrics.csv"
    before = metrics_file.read_text()
    metrics_file.unlink()
    run_session(project, "evaluation")
    assert metrics_file.read_text() == before
