from dataclasses import asdict
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from cvae_mnist.config import TrainingConfig, parse_section, validate_parameters
from cvae_mnist.errors import ParameterError
from cvae_mnist.model import CVAEConfig
from cvae_mnist.settings import CONFIG_LOADER_ARGS


def test_defaults_are_the_reports():
    config = parse_section(TrainingConfig, "training", {})
    assert (config.batch_size, config.test_batch_size, config.epochs, config.lr) == (128, 128, 10, 0.001)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"training": {"batch_size": 0}},
            "Parameter training.batch_size = 0 is invalid: it must be a positive integer.",
        ),
        (
            {"training": {"epochs": 2.5}},
            "Parameter training.epochs = 2.5 is invalid: it must be a positive integer.",
        ),
        ({"training": {"lr": -1}}, "Parameter training.lr = -1 is invalid: it must be a positive number."),
        (
            {"training": {"momentum": 1.5}},
            "Parameter training.momentum = 1.5 is invalid: it must be a number in [0, 1].",
        ),
        (
            {"training": {"loss": "l1"}},
            "Parameter training.loss = 'l1' is invalid: it must be one of 'bce', 'mse'.",
        ),
        ({"training": {"epoch": 3}}, "Unknown parameter(s) training.epoch; 'training' accepts: batch_size,"),
        (
            {"model": {"latent_dim": -4}},
            "Parameter model.latent_dim = -4 is invalid: it must be a positive integer.",
        ),
        (
            {"model": {"image_size": 30}},
            "Parameter model.image_size = 30 is invalid: it must be a positive multiple of 4.",
        ),
        (
            {"data_ingestion": {"n_train": 0}},
            "Parameter data_ingestion.n_train = 0 is invalid: it must be null or a positive integer.",
        ),
        ({"seed": "one"}, "Parameter seed = 'one' is invalid: it must be an integer >= 0."),
        ({"training": 5}, "parameters 'training' must be a mapping"),
    ],
)
def test_bad_parameters_are_named_with_value_and_rule(params, message):
    with pytest.raises(ParameterError) as error:
        validate_parameters(params)
    assert message in str(error.value)


def test_the_report_environment_pins_the_reports_configuration():
    conf = Path(__file__).resolve().parents[1] / "conf"
    args = {k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    params = OmegaConfigLoader(str(conf), env="report", **args)["parameters"]
    validate_parameters(params)
    assert params["model"] == asdict(CVAEConfig()) | {"embedding_dim": params["model"]["embedding_dim"]}
    training = parse_section(TrainingConfig, "training", params["training"])
    report = {"batch_size": 128, "test_batch_size": 128, "epochs": 10, "lr": 0.001, "momentum": 0.9}
    assert {key: getattr(training, key) for key in report} == report
    assert (training.loss, training.beta, training.kl_warmup_epochs, training.lr_schedule) == (
        "bce",
        1.0,
        0,
        "constant",
    )
    assert (training.augment_rotation, training.augment_shift) == (0, 0)
    assert params["seed"] == 1
    # and the default differs from it: that is the point of having both
    base = OmegaConfigLoader(str(conf), env="base", **args)["parameters"]
    assert base["model"] != params["model"]


def test_valid_parameters_pass():
    validate_parameters({"seed": 1, "training": {"epochs": 1, "device": "cpu"}, "model": {"latent_dim": 2}})
