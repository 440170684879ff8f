import pytest
import torch

from cvae_mnist.config import TrainingConfig
from cvae_mnist.errors import TrainingDivergedError
from cvae_mnist.model import CVAEConfig
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist
from cvae_mnist.pipelines.training.nodes import Trainer, _batches, history_to_mlflow_metrics, train_cvae

MODEL = CVAEConfig(latent_dim=4, base_channels=4)
PLAIN = {
    "fused_bce": False,
    "label_lookup": False,
    "fused_adam": False,
    "in_memory_batches": False,
    "channels_last": False,
    "mixed_precision": False,
    "compile": False,
}


@pytest.fixture
def train_set(tiny_raw):
    train, _ = decode_mnist(tiny_raw, {})
    return train


def _one_epoch(train_set, **levers):
    torch.manual_seed(0)
    config = TrainingConfig(batch_size=32, epochs=1, device="cpu", **levers)
    trainer = Trainer.create(MODEL, config, torch.device("cpu"))
    terms = trainer.train_epoch(train_set, torch.Generator().manual_seed(0), epoch=1)
    return terms, trainer.model.state_dict()


def test_in_memory_batches_hold_what_the_dataloader_gives(train_set):
    in_order = list(_batches(train_set, 32, None, in_memory=True))
    loader = list(_batches(train_set, 32, None, in_memory=False))
    assert [len(y) for _, y in in_order] == [32, 32, 32, 24]
    for (x, y), (loader_x, loader_y) in zip(in_order, loader, strict=True):
        assert torch.equal(x, loader_x) and torch.equal(y, loader_y)
    shuffled = list(_batches(train_set, 32, torch.Generator().manual_seed(0), in_memory=True))
    assert sorted(torch.cat([y for _, y in shuffled]).tolist()) == sorted(train_set["labels"].tolist())
    assert not torch.equal(torch.cat([y for _, y in shuffled]), train_set["labels"])


@pytest.mark.parametrize(
    "lever", ["fused_bce", "label_lookup", "fused_adam", "channels_last", "mixed_precision"]
)
def test_each_speed_lever_keeps_the_loss(train_set, lever):
    plain_terms, _ = _one_epoch(train_set, **PLAIN)
    lever_terms, _ = _one_epoch(train_set, **{**PLAIN, lever: True})
    # bf16 autocast rounds activations to 8 bits of mantissa; the others are exact up to fp32 rounding
    assert lever_terms["loss"] == pytest.approx(
        plain_terms["loss"], rel=0.02 if lever == "mixed_precision" else 1e-4
    )


def test_train_cvae_returns_a_cpu_checkpoint_and_history(train_set, tiny_raw):
    _, test_set = decode_mnist(tiny_raw, {})
    checkpoint, history = train_cvae(
        train_set, test_set, MODEL.__dict__, {"epochs": 2, "batch_size": 32, "device": "cpu"}, seed=0
    )
    assert checkpoint["config"] == MODEL.__dict__
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in checkpoint["state_dict"].values())
    assert history["epoch"] == [1, 2] and len(history["test_loss"]) == 2
    metrics = history_to_mlflow_metrics(history)
    assert metrics["test_kl"] == [
        {"step": 1, "value": history["test_kl"][0]},
        {"step": 2, "value": history["test_kl"][1]},
    ]
    assert "epoch" not in metrics


def test_a_diverging_run_names_epoch_batch_and_cause(train_set, tiny_raw):
    _, test_set = decode_mnist(tiny_raw, {})
    with pytest.raises(
        TrainingDivergedError,
        match=r"became (nan|inf) at epoch 1, batch \d+\. The learning rate \(training.lr = 1e\+30\)",
    ):
        train_cvae(
            train_set,
            test_set,
            MODEL.__dict__,
            {"epochs": 1, "batch_size": 32, "device": "cpu", "lr": 1e30},
            seed=0,
        )
