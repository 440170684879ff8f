import pytest
import torch

from cvae_mnist.config import TrainingConfig
from cvae_mnist.datasets import CheckpointDataset
from cvae_mnist.errors import DataError, ModelFileError, TrainingDivergedError
from cvae_mnist.model import CVAEConfig
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist
from cvae_mnist.pipelines.training import nodes as training_nodes
from cvae_mnist.pipelines.training.nodes import Trainer, _batches, history_to_mlflow_metrics, train_cvae

MODEL = CVAEConfig(latent_dim=4, base_channels=4)
PLAIN = {
    "fused_bce": False,
    "label_lookup": False,
    "fused_adam": False,
    "in_memory_batches": False,
    "channels_last": False,
    "subpixel_output": False,
    "gemm_weight_grads": False,
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
    "lever",
    [
        "fused_bce",
        "label_lookup",
        "fused_adam",
        "channels_last",
        "subpixel_output",
        "gemm_weight_grads",
        "mixed_precision",
    ],  # fmt: skip
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
        train_set, test_set, None, MODEL.__dict__, {"epochs": 2, "batch_size": 32, "device": "cpu"}, seed=0
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
            None,
            MODEL.__dict__,
            {"epochs": 1, "batch_size": 32, "device": "cpu", "lr": 1e30},
            seed=0,
        )


def test_the_kl_weight_ramps_up_over_the_warmup_epochs():
    config = TrainingConfig(beta=0.5, kl_warmup_epochs=2, device="cpu")
    trainer = Trainer.create(MODEL, config, torch.device("cpu"), steps_per_epoch=10)
    weights = []
    for step in range(25):
        trainer.step = step
        weights.append(trainer.kl_weight())
    assert weights[0] == pytest.approx(0.5 / 20) and weights[9] == pytest.approx(0.25)
    assert weights[19:] == [0.5] * 6
    assert all(a < b for a, b in zip(weights[:19], weights[1:20]))
    assert Trainer.create(MODEL, TrainingConfig(beta=0.5), torch.device("cpu")).kl_weight() == 0.5


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_learning_rate_schedule_steps_once_per_batch(train_set, schedule):
    config = TrainingConfig(batch_size=32, epochs=2, device="cpu", lr=0.01, lr_schedule=schedule)
    trainer = Trainer.create(MODEL, config, torch.device("cpu"), steps_per_epoch=4)
    used = []  # the learning rate of each batch
    step = trainer.scheduler.step

    def record_then_step():
        used.append(trainer.optimizer.param_groups[0]["lr"])
        step()

    trainer.scheduler.step = record_then_step
    for epoch in (1, 2):
        trainer.train_epoch(train_set, torch.Generator().manual_seed(0), epoch)
    assert trainer.step == len(used) == 8
    assert max(used) == pytest.approx(0.01, rel=0.05)  # onecycle peaks between two batches
    assert used[-1] < 0.01 * 0.05  # annealed by the last planned batch
    if schedule == "onecycle":
        assert used[0] < 0.01 / 20  # it warms up first
    else:
        assert used == sorted(used, reverse=True)


class TestCheckpoints:
    TRAINING = {"batch_size": 32, "device": "cpu"}

    @pytest.fixture
    def data(self, tiny_raw):
        return decode_mnist(tiny_raw, {})

    def _train(self, data, store, epochs, resume=False, **changes):
        params = {**self.TRAINING, "epochs": epochs, "resume": resume, **changes}
        return train_cvae(*data, store, MODEL.__dict__, params, seed=0)

    def test_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(self, data, tmp_path):
        full_model, full_history = self._train(data, None, epochs=3)
        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        self._train(data, store, epochs=1)  # as if stopped after the first epoch
        assert store.read()["epoch"] == 1
        resumed_model, resumed_history = self._train(data, store, epochs=3, resume=True)
        for name, tensor in full_model["state_dict"].items():
            assert torch.equal(resumed_model["state_dict"][name], tensor), name
        for key in ("train_loss", "test_loss", "train_kl", "test_reconstruction"):
            assert resumed_history[key] == full_history[key]
        assert store.read()["epoch"] == 3

    def test_schedules_augmentation_and_the_default_architecture_resume_bit_for_bit(self, data, tmp_path):
        """A run stopped after its first epoch (as a kill would) and resumed ends like an
        uninterrupted one, with the learning-rate schedule, KL warm-up and augmentation."""
        model = {
            **MODEL.__dict__,
            "conditioning": "embedding",
            "normalization": "batch",
            "residual_blocks": 1,
        }
        changes = {
            "lr_schedule": "onecycle",
            "kl_warmup_epochs": 2,
            "augment_rotation": 10,
            "augment_shift": 2,
        }
        params = {**self.TRAINING, "epochs": 3, **changes}
        full_model, full_history = train_cvae(*data, None, model, params, seed=0)

        class Stop(Exception):
            pass

        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        write = store.write

        def write_then_stop(state):
            write(state)
            raise Stop

        store.write = write_then_stop
        with pytest.raises(Stop):
            train_cvae(*data, store, model, params, seed=0)
        store.write = write
        resumed_model, resumed_history = train_cvae(*data, store, model, {**params, "resume": True}, seed=0)
        for name, tensor in full_model["state_dict"].items():
            assert torch.equal(resumed_model["state_dict"][name], tensor), name
        assert resumed_history["train_loss"] == full_history["train_loss"]

    def test_another_prior_resumes_a_finished_run_without_training(self, data, tmp_path):
        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        params = {**self.TRAINING, "epochs": 1}
        fitted = {**MODEL.__dict__, "prior": "fitted", "prior_components": 3}
        model, history = train_cvae(*data, store, fitted, params, seed=0)
        again, again_history = train_cvae(
            *data, store, {**MODEL.__dict__, "prior": "standard_normal"}, {**params, "resume": True}, seed=0
        )
        assert again_history == history
        assert again["config"]["prior"] == "standard_normal"
        trained = [k for k in model["state_dict"] if not k.startswith("prior_")]
        assert trained and all(torch.equal(again["state_dict"][k], model["state_dict"][k]) for k in trained)

    def test_a_schedule_cannot_resume_with_other_epochs(self, data, tmp_path):
        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        self._train(data, store, epochs=1, lr_schedule="cosine")
        with pytest.raises(ModelFileError, match=r"training.epochs: checkpoint 1, parameters 2"):
            self._train(data, store, epochs=2, resume=True, lr_schedule="cosine")

    def test_a_finished_run_is_not_retrained(self, data, tmp_path):
        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        model, history = self._train(data, store, epochs=2)
        again, again_history = self._train(data, store, epochs=2, resume=True)
        assert again_history == history  # same epochs and the same recorded timings: nothing ran
        assert all(torch.equal(again["state_dict"][k], v) for k, v in model["state_dict"].items())

    def test_resume_without_a_checkpoint_starts_from_scratch(self, data, tmp_path):
        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        _, history = self._train(data, store, epochs=1, resume=True)
        assert history["epoch"] == [1]

    def test_a_checkpoint_of_other_settings_is_refused_with_the_differences(self, data, tmp_path):
        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        self._train(data, store, epochs=1)
        with pytest.raises(
            ModelFileError,
            match=r"Cannot resume from .*checkpoint.pt: .*training.batch_size: checkpoint 32, parameters 16.*training.resume=false",
        ):
            self._train(data, store, epochs=2, resume=True, batch_size=16)

    def test_divergence_keeps_the_last_good_checkpoint(self, data, tmp_path, monkeypatch):
        store = CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()
        self._train(data, store, epochs=1)

        def nan_loss(logits, *args, **kwargs):
            nan = logits.sum() * float("nan")
            return nan, nan, nan

        monkeypatch.setattr(training_nodes, "cvae_loss", nan_loss)
        with pytest.raises(
            TrainingDivergedError,
            match=r"became nan at epoch 2, batch 1\..*The checkpoint of epoch 1 is kept in .*checkpoint.pt",
        ):
            self._train(data, store, epochs=2, resume=True)
        assert store.read()["epoch"] == 1


def test_fit_prior_fits_a_mixture_or_leaves_the_standard_normal(train_set):
    fitted = {**MODEL.__dict__, "prior": "fitted", "prior_components": 2}
    checkpoint, _ = train_cvae(train_set, train_set, None, fitted, {"epochs": 1, "batch_size": 32}, seed=0)
    model = training_nodes.fit_prior(checkpoint, train_set, {"device": "cpu"}, seed=0)
    state = model["state_dict"]
    assert state["prior_weights"].shape == (10, 2) and torch.allclose(
        state["prior_weights"].sum(1), torch.ones(10)
    )
    assert not torch.equal(state["prior_mean"], torch.zeros_like(state["prior_mean"]))
    plain, _ = train_cvae(train_set, train_set, None, MODEL.__dict__, {"epochs": 1, "batch_size": 32}, seed=0)
    assert training_nodes.fit_prior(plain, train_set, {}, seed=0) is plain


def test_fit_prior_with_too_few_images_of_a_class_says_so(train_set):
    fitted = {**MODEL.__dict__, "prior": "fitted", "prior_components": 2}
    checkpoint, _ = train_cvae(train_set, train_set, None, fitted, {"epochs": 1, "batch_size": 32}, seed=0)
    few = {key: value[:15] for key, value in train_set.items()}  # classes 5-9 once each
    with pytest.raises(
        DataError, match=r"Cannot fit the prior \(model.prior = fitted\): fitting 2 Gaussians to class 5"
    ):
        training_nodes.fit_prior(checkpoint, few, {"device": "cpu"}, seed=0)
