"""The training engine: batches, the optimisation loop, speed settings, checkpoints and resume."""

import pytest
import torch

from cvae_mnist.core.runtime import mixed_precision_dtype
from cvae_mnist.datasets import CheckpointDataset
from cvae_mnist.engine import checkpoints, recipe
from cvae_mnist.engine.checkpoints import resume_from
from cvae_mnist.engine.recipe import CVAEObjective, fit_cvae
from cvae_mnist.engine.trainer import Trainer, batches
from cvae_mnist.errors import ModelFileError, TrainingDivergedError
from cvae_mnist.params import IngestionParams, ModelParams, TrainingParams
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist

MODEL = ModelParams(
    latent_dim=4,
    base_channels=4,
    conditioning="one_hot",
    normalization="none",
    residual_blocks=0,
    decoder_conditioning="input",
)
DEFAULT_LAYERS = ModelParams(latent_dim=4, base_channels=4, embedding_dim=3)
PLAIN = {"fast_path": "off", "mixed_precision": False}


@pytest.fixture
def data(tiny_raw):
    return decode_mnist(tiny_raw, IngestionParams())


def _train(data, model=MODEL, store=None, **training):
    settings = {"batch_size": 32, "device": "cpu", "epochs": 2, "lr": 1e-3, "lr_schedule": "constant"}
    params = TrainingParams(**{**settings, **training})
    return fit_cvae(model, *data, params, seed=0, checkpoint=store)


def test_batches_cover_the_data_once_in_order_or_shuffled(data):
    train, _ = data
    in_order = list(batches(train, 32))
    assert [len(y) for _, y in in_order] == [32, 32, 32, 24]
    assert torch.equal(torch.cat([x for x, _ in in_order]), train["images"])
    shuffled = torch.cat([y for _, y in batches(train, 32, torch.Generator().manual_seed(0))])
    assert sorted(shuffled.tolist()) == sorted(train["labels"].tolist())
    assert not torch.equal(shuffled, train["labels"])


@pytest.mark.parametrize("model", [MODEL, DEFAULT_LAYERS], ids=["report's layers", "default layers"])
@pytest.mark.parametrize("setting", [{"fast_path": "auto"}, {"mixed_precision": True}])
def test_each_speed_setting_keeps_the_loss(data, model, setting, monkeypatch):
    used = []  # (the first convolution's class, the autocast dtype) while each run trains
    train_epoch = Trainer.train_epoch

    def recorded(self, *args):
        network = getattr(self.network, "cvae", self.network)  # inside the training aids
        used.append((type(network.conv1).__name__, self.autocast_dtype))
        return train_epoch(self, *args)

    monkeypatch.setattr(Trainer, "train_epoch", recorded)
    _, plain = _train(data, model, epochs=1, **PLAIN)
    _, fast = _train(data, model, epochs=1, **{**PLAIN, **setting})
    fast_layer = "LabelLookupConv2d" if setting.get("fast_path") == "auto" else "ConditionedConv2d"
    dtype = mixed_precision_dtype(torch.device("cpu")) if setting.get("mixed_precision") else None
    assert used == [("ConditionedConv2d", None), (fast_layer, dtype)]
    # bf16 autocast rounds activations to 8 bits of mantissa; the fast forms are exact up to fp32
    # rounding, which four Adam steps through batch norm grow to about 2e-4 here
    tolerance = 0.02 if setting.get("mixed_precision") else 1e-3 if model is DEFAULT_LAYERS else 1e-4
    assert fast["train_loss"] == pytest.approx(plain["train_loss"], rel=tolerance)
    assert fast["test_loss"] == pytest.approx(plain["test_loss"], rel=tolerance)


def test_fit_cvae_returns_a_plain_cpu_model_and_its_history(data):
    model, history = _train(data)
    assert model.config == MODEL and not model.training
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in model.state_dict().values())
    assert type(model.conv1).__name__ == "ConditionedConv2d"  # the fast forms are gone after training
    assert history["epoch"] == [1, 2] and len(history["test_loss"]) == 2
    terms = ("loss", "reconstruction", "kl", "critic", "swap")  # the swap critic is on by default
    assert set(history) == {"epoch", "seconds"} | {f"{s}_{t}" for s in ("train", "test") for t in terms}
    assert history["train_loss"][1] < history["train_loss"][0]


def test_a_diverging_run_names_epoch_batch_and_cause(data):
    with pytest.raises(
        TrainingDivergedError,
        match=r"training loss became (nan|inf) at epoch 1/1, by batch \d+\. The learning rate \(training.lr = 1e\+30\)",
    ):
        _train(data, epochs=1, lr=1e30)


def test_the_kl_weight_ramps_up_over_the_warmup_steps():
    objective = CVAEObjective("bce", beta=0.5, warmup_steps=20)
    weights = [objective.kl_weight(step) for step in range(25)]
    assert weights[0] == pytest.approx(0.5 / 20) and weights[9] == pytest.approx(0.25)
    assert weights[19:] == [0.5] * 6
    assert all(a < b for a, b in zip(weights[:19], weights[1:20]))
    assert objective.kl_weight(None) == 0.5  # held-out data is scored at the full weight
    assert CVAEObjective("bce", beta=0.5).kl_weight(0) == 0.5


def test_an_epoch_without_a_progress_bar_trains_the_same(data):
    """Benchmarks train without a bar (``description=None``), over more than 20 batches."""
    train, _ = data

    def objective(model, x, y, step):
        return {"loss": model(x.mean((1, 2, 3))[:, None]).square().mean()}

    losses = []
    for description in ("epoch 1", None):
        torch.manual_seed(0)
        trainer = Trainer(
            torch.nn.Linear(1, 1), objective, lr=0.01, total_steps=25, device=torch.device("cpu"), name="t"
        )
        losses.append(trainer.train_epoch(train, 4, torch.Generator().manual_seed(0), description))
    assert losses[0] == losses[1] and trainer.step == len(train["labels"]) // 4 > 20


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_learning_rate_schedule_steps_once_per_batch(data, schedule):
    train, _ = data
    model = torch.nn.Linear(1, 1)

    def objective(model, x, y, step):
        return {"loss": model(x.mean((1, 2, 3))[:, None]).square().mean()}

    trainer = Trainer(
        model, objective, lr=0.01, total_steps=8, device=torch.device("cpu"), name="t", schedule=schedule
    )
    used = []  # the learning rate of each batch
    step = trainer.scheduler.step

    def record_then_step():
        used.append(trainer.optimizer.param_groups[0]["lr"])
        step()

    trainer.scheduler.step = record_then_step
    for epoch in (1, 2):
        trainer.train_epoch(train, 32, torch.Generator().manual_seed(0), f"epoch {epoch}")
    assert trainer.step == len(used) == 8
    assert max(used) == pytest.approx(0.01, rel=0.05)  # onecycle peaks between two batches
    assert used[-1] < 0.01 * 0.05  # annealed by the last planned batch
    if schedule == "onecycle":
        assert used[0] < 0.01 / 20  # it warms up first
    else:
        assert used == sorted(used, reverse=True)


class TestCheckpoints:
    @pytest.fixture
    def store(self, tmp_path):
        return CheckpointDataset(filepath=str(tmp_path / "checkpoint.pt")).load()

    @staticmethod
    def assert_same_weights(model, other):
        for name, tensor in other.state_dict().items():
            assert torch.equal(model.state_dict()[name], tensor), name

    def test_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(self, data, store, monkeypatch):
        full_model, full_history = _train(data, epochs=3)
        _train(data, store=store, epochs=1)  # as if stopped after the first epoch
        assert store.read()["epoch"] == 1
        first_epoch_seconds = store.read()["history"]["seconds"]
        trained = []  # the epochs the resumed run trains itself
        train_epoch = Trainer.train_epoch
        monkeypatch.setattr(
            Trainer, "train_epoch", lambda self, *a: trained.append(a[-1]) or train_epoch(self, *a)
        )
        resumed_model, resumed_history = _train(data, store=store, epochs=3, resume=True)
        assert trained == ["epoch 2/3", "epoch 3/3"]  # the finished epoch is skipped ...
        assert resumed_history["seconds"][:1] == first_epoch_seconds  # ... and its record kept
        self.assert_same_weights(resumed_model, full_model)
        for key in ("train_loss", "test_loss", "train_kl", "test_reconstruction"):
            assert resumed_history[key] == full_history[key]
        assert store.read()["epoch"] == 3
        assert store.read()["trainer"]["step"] == 3 * -(-len(data[0]["labels"]) // 32)

    def test_schedules_augmentation_and_the_default_architecture_resume_bit_for_bit(self, data, store):
        """A run stopped after its first epoch (as a kill would) and resumed ends like an
        uninterrupted one, with the learning-rate schedule, KL warm-up and augmentation,
        on the default layers with the fast path and bf16."""
        settings = {
            "epochs": 3, "lr_schedule": "onecycle", "kl_warmup_epochs": 2, "augment_rotation": 10,
            "augment_shift": 2, "fast_path": "auto", "mixed_precision": True,
        }  # fmt: skip
        full_model, full_history = _train(data, DEFAULT_LAYERS, **settings)

        class Stop(Exception):
            pass

        write = store.write

        def write_then_stop(state):
            write(state)
            raise Stop

        store.write = write_then_stop
        with pytest.raises(Stop):
            _train(data, DEFAULT_LAYERS, store=store, **settings)
        store.write = write
        resumed_model, resumed_history = _train(data, DEFAULT_LAYERS, store=store, resume=True, **settings)
        self.assert_same_weights(resumed_model, full_model)
        assert resumed_history["train_loss"] == full_history["train_loss"]

    def test_the_engine_trains_the_network_alone_and_leaves_the_prior_to_its_node(self, data, store):
        model, _ = _train(data, store=store, epochs=1)
        assert model.prior_config.kind == "standard_normal"
        assert not any(key.startswith("prior.") for key in store.read()["trainer"]["model"])

    def test_a_schedule_cannot_resume_with_other_epochs(self, data, store):
        _train(data, store=store, epochs=1, lr_schedule="cosine")
        with pytest.raises(ModelFileError, match=r"training.epochs: checkpoint 1, parameters 2"):
            _train(data, store=store, epochs=2, resume=True, lr_schedule="cosine")

    def test_a_finished_run_is_not_retrained(self, data, store):
        model, history = _train(data, store=store)
        again, again_history = _train(data, store=store, resume=True)
        assert again_history == history  # same epochs and the same recorded timings: nothing ran
        self.assert_same_weights(again, model)

    def test_resume_without_a_checkpoint_starts_from_scratch(self, data, store):
        _, history = _train(data, store=store, epochs=1, resume=True)
        assert history["epoch"] == [1]

    def test_a_checkpoint_of_other_settings_is_refused_with_the_differences(self, data, store):
        _train(data, store=store, epochs=1)
        with pytest.raises(
            ModelFileError,
            match=r"Cannot resume from .*checkpoint.pt: .*training.batch_size: checkpoint 32, parameters 16.*training.resume=false",
        ):
            _train(data, store=store, resume=True, batch_size=16)

    def test_a_checkpoint_of_another_version_is_refused(self, data, store):
        store.write({"epoch": 1, "model": {}})
        with pytest.raises(ModelFileError, match=r"not a checkpoint of this version of cvae-mnist"):
            _train(data, store=store, resume=True)

    def test_divergence_keeps_the_last_good_checkpoint(self, data, store, monkeypatch):
        _train(data, store=store, epochs=1)

        def nan_loss(logits, *args, **kwargs):
            nan = logits.sum() * float("nan")
            return {"loss": nan, "reconstruction": nan, "kl": nan}

        monkeypatch.setattr(recipe, "cvae_loss", nan_loss)
        with pytest.raises(
            TrainingDivergedError,
            match=r"became nan at epoch 2/2, by batch 1\..*The checkpoint of epoch 1 is kept in .*checkpoint.pt",
        ):
            _train(data, store=store, resume=True)
        assert store.read()["epoch"] == 1


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]
)
def test_bf16_only_on_gpus_that_compute_it_natively(monkeypatch, capability, expected):
    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability
    )
    # a T4 or V100 (7.x) answers is_bf16_supported() with True by emulation: never asked
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert mixed_precision_dtype(torch.device("cuda", 1)) is expected
    assert asked == [torch.device("cuda", 1)]  # the training's own GPU, not the current one


def test_no_autocast_context_is_entered_without_mixed_precision(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("autocast entered")

    monkeypatch.setattr(torch, "autocast", refuse)  # as torch < 2.5 does for MPS
    model = torch.nn.Linear(2, 1)
    trainer = Trainer(
        model, lambda m, x, y, s: {"loss": m(x).sum()}, lr=0.1, total_steps=1, device=torch.device("cpu"),
        name="t", mixed_precision=False,
    )  # fmt: skip
    assert trainer.autocast_dtype is None
    trainer._step(torch.ones(3, 2), torch.zeros(3), 0)


class TestDeviceRandomState:
    """The random state a checkpoint keeps of the training device, and where it is restored."""

    def test_the_cpu_keeps_no_device_state(self):
        state = checkpoints.rng_state(torch.Generator(), torch.device("cpu"))
        assert state["device"] == {"type": "cpu", "state": None}

    def test_a_gpu_keeps_its_own_generator_and_restores_it_on_its_own_device(self, monkeypatch):
        calls = []
        monkeypatch.setattr(
            torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.ones(3)
        )
        monkeypatch.setattr(
            torch.cuda, "set_rng_state", lambda s, device: calls.append(("set", device, s.sum().item()))
        )
        device = torch.device("cuda", 1)  # rank 1 of a job on a machine of 2 GPUs
        state = checkpoints.rng_state(torch.Generator(), device)
        checkpoints.set_rng_state(
            state, torch.Generator(), torch.device("cuda", 0)
        )  # resumed on a 1-GPU host
        assert calls == [("get", device), ("set", torch.device("cuda", 0), 3.0)]

    def test_mps_keeps_its_generator(self, monkeypatch):
        calls = []
        monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.full((2,), 7))
        monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: calls.append(s.tolist()))
        state = checkpoints.rng_state(torch.Generator(), torch.device("mps"))
        checkpoints.set_rng_state(state, torch.Generator(), torch.device("mps"))
        assert calls == [[7, 7]]

    def test_a_gpu_checkpoint_resumes_on_the_cpu_without_touching_cuda(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.ones(3))
        state = checkpoints.rng_state(torch.Generator().manual_seed(4), torch.device("cuda", 0))

        def refuse(*args, **kwargs):
            raise AssertionError("CUDA touched")

        monkeypatch.setattr(torch.cuda, "set_rng_state", refuse)
        generator = torch.Generator()
        checkpoints.set_rng_state(state, generator, torch.device("cpu"))
        assert torch.equal(generator.get_state(), torch.Generator().manual_seed(4).get_state())


def test_an_epoch_reads_the_loss_back_every_few_batches_not_every_step(monkeypatch):
    model = torch.nn.Linear(1, 1)
    data = {"images": torch.rand(450, 1, 1, 1), "labels": torch.zeros(450, dtype=torch.long)}

    def objective(m, x, y, step):
        loss = m(x.flatten(1)).square().mean()
        return {"loss": loss, "half": loss / 2}

    trainer = Trainer(model, objective, lr=0.01, total_steps=45, device=torch.device("cpu"), name="t")
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or item(self))
    means = trainer.train_epoch(data, 10, torch.Generator().manual_seed(0), "epoch 1")
    # 45 steps: the loss read at batches 1, 20, 40 and 45, then each term's mean once
    assert len(reads) == 4 + 2 and trainer.step == 45
    assert means["half"] == pytest.approx(means["loss"] / 2)


class _Store:
    """A CheckpointStore holding one state in memory."""

    filepath = "memory/checkpoint.pt"

    def __init__(self, state: dict) -> None:
        self.state = state

    def exists(self) -> bool:
        return True

    def read(self) -> dict:
        return self.state

    def write(self, state: dict) -> None:
        self.state = state


def test_a_checkpoint_of_other_settings_is_refused_naming_each_difference():
    state = {"settings": {"lr": 0.001, "epochs": 8}, "trainer": {}, "rng": {}, "history": {}}
    with pytest.raises(ModelFileError) as refused:  # a setting on one side only counts too
        resume_from(_Store(state), None, None, {"lr": 0.002, "epochs": 8, "beta": 0.2})
    assert (
        "it was written with other settings (beta: checkpoint None, parameters 0.2; "
        "lr: checkpoint 0.001, parameters 0.002). Resume with" in str(refused.value)
    )
    del state["rng"]
    with pytest.raises(ModelFileError, match="it is not a checkpoint of this version of cvae-mnist"):
        resume_from(_Store(state), None, None, {"lr": 0.001, "epochs": 8})
