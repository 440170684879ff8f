"""The typed parameters: their defaults, the report's environment, and one-line messages."""

import shutil
from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.framework.project import find_pipelines
from kedro.validation import ParameterValidationError
from kedro.validation.parameter_validator import ParameterValidator
from pydantic import ValidationError

from cvae_mnist.cli import user_error
from cvae_mnist.core.runtime import seed_everything
from cvae_mnist.errors import describe_validation_error
from cvae_mnist.params import ModelParams, ProjectParameters, TrainingParams
from cvae_mnist.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[1] / "conf"


def _parameters(env: str) -> dict:
    args = {k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    return OmegaConfigLoader(str(CONF), env=env, **args)["parameters"]


def test_the_models_defaults_are_conf_base_parameters_and_every_key_is_there():
    written = yaml.safe_load((CONF / "base" / "parameters.yml").read_text())
    assert written == ProjectParameters().model_dump()


def test_the_report_environment_pins_the_reports_configuration():
    report = ProjectParameters.model_validate(_parameters("report"))
    hyperparameters = {
        "batch_size": 128,
        "test_batch_size": 128,
        "epochs": 10,
        "lr": 0.001,
        "adam_beta1": 0.9,
    }
    assert {key: getattr(report.training, key) for key in hyperparameters} == hyperparameters
    assert (report.training.loss, report.training.beta, report.training.lr_schedule) == (
        "bce",
        1.0,
        "constant",
    )
    assert (report.training.augment_rotation, report.training.augment_shift, report.seed) == (0, 0, 1)
    model = report.model
    assert (model.latent_dim, model.conditioning, model.normalization, model.residual_blocks) == (
        100,
        "one_hot",
        "none",
        0,
    )
    assert model.decoder_conditioning == "input" and report.prior.kind == "standard_normal"
    assert report.training.adversary_weight == 0
    assert ProjectParameters.model_validate(_parameters("base")).model != model  # the point of having both


@pytest.mark.parametrize("env", ["smoke", "report"])
def test_every_environment_is_valid(env):
    ProjectParameters.model_validate(_parameters(env))


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("training", {"epochs": 0}, "Parameter training.epochs = 0 is invalid: input should be greater than or equal to 1"),
        ("training", {"epochs": 2.5}, "Parameter training.epochs = 2.5 is invalid: input should be a valid integer"),
        ("training", {"resume": 1}, "Parameter training.resume = 1 is invalid: input should be a valid boolean"),
        ("training", {"loss": "l1"}, "Parameter training.loss = 'l1' is invalid: input should be 'bce' or 'mse'"),
        ("training", {"epochz": 3}, "Unknown parameter training.epochz (allowed there: batch_size, test_batch_size,"),
        ("model", {"image_size": 32}, "Parameter model.image_size = 32 is invalid: input should be 28"),
        ("model", {"latent_dim": 1_000_000}, "model.latent_dim = 1000000 is invalid: input should be less than or equal to 1024"),
    ],
)  # fmt: skip
def test_a_bad_value_is_named_with_its_rule(section, values, message):
    model = {"training": TrainingParams, "model": ModelParams}[section]
    with pytest.raises(ValidationError) as error:
        model(**values)
    assert message in describe_validation_error(error.value, section)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"trainng": {"epochs": 1}},
            "Unknown parameter trainng (allowed there: seed, data_ingestion, model,",
        ),
        ({"seed": -1}, "Parameter seed = -1 is invalid: input should be greater than or equal to 0."),
        ({"seed": "one"}, "Parameter seed = 'one' is invalid: input should be a valid integer."),
        ({"seed": 2**32}, "Parameter seed = 4294967296 is invalid: input should be less than 4294967296."),
        (
            {"classifier": {"seed": 2**40}},
            "Parameter classifier.seed = 1099511627776 is invalid: input should be less than 4294967296.",
        ),
        (
            {"generation": {"seed": 2**33}},
            "Parameter generation.seed = 8589934592 is invalid: input should be less than 4294967296.",
        ),
    ],
)
def test_the_top_level_is_checked_too(params, message):
    with pytest.raises(ValidationError) as error:
        ProjectParameters.model_validate(params)
    assert message in describe_validation_error(error.value)


@pytest.fixture(scope="module")
def validator():
    from kedro.framework.project import configure_project  # noqa: PLC0415

    configure_project("cvae_mnist")
    return ParameterValidator(find_pipelines())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"training": {"epochs": 0}}, "Parameter training.epochs = 0 is invalid: input should be greater than or equal to 1."),
        ({"model": {"num_classes": 5}}, "Parameter model.num_classes = 5 is invalid: input should be 10."),
        ({"evaluation": {"iw_samples": 0, "batch_size": "big"}}, "Parameter evaluation.batch_size = 'big' is invalid: input should be a valid integer; Parameter evaluation.iw_samples = 0 is invalid"),
        ({"generation": {"digit": 10}}, "Parameter generation.digit = 10 is invalid: input should be less than or equal to 9."),
        ({"training": {"lr": -1}, "classifier": {"epochs": 0}}, "Parameter training.lr = -1 is invalid: input should be greater than 0"),
        ({"training": {"lr": -1}, "classifier": {"epochs": 0}}, "Parameter classifier.epochs = 0 is invalid"),
        ({"training": {"epoch": 3}}, "Unknown parameter training.epoch (allowed there: batch_size,"),
        ({"training": None}, "Parameter training is empty: it must be a mapping of keys to values."),
        ({"training": 5}, "Parameter training = 5 is invalid: input should be a valid dictionary or instance of TrainingParams."),
    ],
)  # fmt: skip
def test_every_bad_value_of_the_merged_parameters_is_named_in_one_line(changes, message):
    # what ParametersHook does with the merged files and --params, before Kedro validates them
    with pytest.raises(ValidationError) as error:
        ProjectParameters.model_validate({**_parameters("base"), **changes})
    line = describe_validation_error(error.value)
    assert message in line and "\n" not in line


def test_kedros_own_validation_error_is_one_line_if_it_ever_comes_first(validator):
    with pytest.raises(ParameterValidationError) as error:
        validator.validate_raw_params({**_parameters("base"), "training": {"epochs": 0}})
    line = str(user_error(error.value))
    assert line.startswith("Parameter validation failed: - Parameter 'training':") and "\n" not in line


def test_kedro_hands_the_nodes_typed_sections(validator):
    validated = validator.validate_raw_params(_parameters("base"))
    assert isinstance(validated["training"], TrainingParams) and validated["training"] == TrainingParams()


def test_the_conf_local_examples_are_valid_and_merge_key_by_key(tmp_path):
    shutil.copytree(CONF, tmp_path / "conf")
    shutil.copytree(CONF / "local-example", tmp_path / "conf" / "local", dirs_exist_ok=True)
    args = {k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    loader = OmegaConfigLoader(str(tmp_path / "conf"), env="local", **args)
    loader.config_patterns.update({"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]})
    parameters = ProjectParameters.model_validate(loader["parameters"])
    assert parameters.training.epochs == 2 and parameters.training.batch_size == 128  # one key changed
    mlflow_conf = loader["mlflow"]
    assert mlflow_conf["tracking"]["experiment"]["name"] == "cvae_mnist_mine"
    assert mlflow_conf["tracking"]["params"]["dict_params"]["flatten"] is True  # the rest kept
    assert mlflow_conf["server"]["mlflow_tracking_uri"] == "sqlite:///mlflow.db"
    assert set(loader["credentials"]["mlflow_credentials"]) == {
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }


def test_the_largest_seed_allowed_seeds_everything():
    seed_everything(2**32 - 1)  # NumPy's limit: the parameters' bound is exactly it
    with pytest.raises(ValueError):
        seed_everything(2**32)
