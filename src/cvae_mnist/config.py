"""Typed, validated views of the parameter sections in ``conf/*/parameters.yml``.

Every section a node reads is turned into a frozen dataclass here, in one place,
so that a typo or a bad value stops the run before any work with one message that
names the parameter, the value given and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from cvae_mnist.errors import ParameterError
from cvae_mnist.losses import RECONSTRUCTION_LOSSES
from cvae_mnist.model import CVAEConfig

T = TypeVar("T")
Check = tuple[Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


POSITIVE_INT: Check = (lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT: Check = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
OPTIONAL_POSITIVE_INT: Check = (lambda v: v is None or (_is_int(v) and v > 0), "null or a positive integer")
POSITIVE_NUMBER: Check = (lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER: Check = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
PROBABILITY: Check = (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
BOOLEAN: Check = (lambda v: isinstance(v, bool), "true or false")


LAST_DIGIT = 9
OPTIONAL_DIGIT: Check = (
    lambda v: v is None or (_is_int(v) and 0 <= v <= LAST_DIGIT),
    "null or an integer from 0 to 9",
)


def int_at_least(minimum: int) -> Check:
    return (lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}")


def one_of(*choices: Any) -> Check:
    return (lambda v: v in choices, "one of " + ", ".join(map(repr, choices)))


def knob(default: Any, check: Check) -> Any:
    """A dataclass field with its default and the check its value must pass."""
    return field(default=default, metadata={"check": check})


MODEL_CHECKS: dict[str, Check] = {
    "image_size": (lambda v: _is_int(v) and v > 0 and v % 4 == 0, "a positive multiple of 4"),
    "num_classes": POSITIVE_INT,
    "latent_dim": POSITIVE_INT,
    "base_channels": POSITIVE_INT,
    "conditioning": one_of("one_hot", "embedding"),
    "embedding_dim": POSITIVE_INT,
    "normalization": one_of("none", "batch"),
    "residual_blocks": NON_NEGATIVE_INT,
    "prior": one_of("standard_normal", "fitted"),
    "prior_components": POSITIVE_INT,
}


@dataclass(frozen=True)
class IngestionConfig:
    n_train: int | None = knob(None, OPTIONAL_POSITIVE_INT)  # keep the first n; null = all
    n_test: int | None = knob(None, OPTIONAL_POSITIVE_INT)


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = knob(128, POSITIVE_INT)
    test_batch_size: int = knob(128, POSITIVE_INT)
    epochs: int = knob(10, POSITIVE_INT)
    lr: float = knob(1e-3, POSITIVE_NUMBER)
    momentum: float = knob(0.9, PROBABILITY)  # the report's value, kept as Adam's beta1
    loss: str = knob("bce", one_of(*RECONSTRUCTION_LOSSES))
    beta: float = knob(1.0, NON_NEGATIVE_NUMBER)  # weight of the KL term
    kl_warmup_epochs: float = knob(0, NON_NEGATIVE_NUMBER)  # KL weight ramps linearly from 0 to beta
    lr_schedule: str = knob("constant", one_of("constant", "onecycle", "cosine"))
    augment_rotation: float = knob(0.0, NON_NEGATIVE_NUMBER)  # random rotation, up to +- degrees
    augment_shift: float = knob(0.0, NON_NEGATIVE_NUMBER)  # random shift, up to +- pixels
    device: str = knob("auto", one_of("auto", "cpu", "cuda", "mps"))
    resume: bool = knob(False, BOOLEAN)  # continue from the last complete epoch's checkpoint
    # Speed levers (benchmarks/train_speed.py measures them); false = the plain path.
    fused_bce: bool = knob(True, BOOLEAN)  # BCE on logits, not sigmoid + BCE
    in_memory_batches: bool = knob(True, BOOLEAN)  # slice batches from tensors, not a DataLoader
    label_lookup: bool = knob(True, BOOLEAN)  # first conv: label channels' response looked up per class
    fused_adam: bool = knob(True, BOOLEAN)  # Adam's update in one fused kernel (CPU and CUDA)
    channels_last: bool = knob(True, BOOLEAN)  # NHWC memory layout for the convolutions
    subpixel_output: bool = knob(True, BOOLEAN)  # last transposed conv as a conv + pixel shuffle
    gemm_weight_grads: bool = knob(True, BOOLEAN)  # inner 4x4 convs' weight gradients as one GEMM each
    mixed_precision: bool = knob(True, BOOLEAN)  # bf16 autocast where the hardware has bf16
    compile: bool = knob(False, BOOLEAN)  # torch.compile the training step
    num_threads: int = knob(0, NON_NEGATIVE_INT)  # torch intra-op threads; 0 = torch default


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = knob(1000, POSITIVE_INT)
    device: str = knob("auto", one_of("auto", "cpu", "cuda", "mps"))
    iw_samples: int = knob(50, POSITIVE_INT)  # K, importance samples per image for iw_nll
    samples_per_class: int = knob(1000, POSITIVE_INT)  # generated digits per class for cond_accuracy, fid
    images_per_class: int = knob(3, POSITIVE_INT)  # real/reconstructed pairs per class
    generated_per_class: int = knob(10, POSITIVE_INT)  # columns of the generated grid
    interpolation_steps: int = knob(10, int_at_least(2))  # points on each path
    worst_examples: int = knob(12, POSITIVE_INT)  # digits in the worst-reconstructions figure


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = knob(5, POSITIVE_INT)
    batch_size: int = knob(128, POSITIVE_INT)
    lr: float = knob(3e-3, POSITIVE_NUMBER)  # peak of the one-cycle schedule
    seed: int = knob(1, NON_NEGATIVE_INT)  # its own seed: the top-level seed does not change the judge


@dataclass(frozen=True)
class GenerationConfig:
    digit: int | None = knob(None, OPTIONAL_DIGIT)  # null = all ten digits
    n_samples: int = knob(16, POSITIVE_INT)  # images per digit
    seed: int = knob(0, NON_NEGATIVE_INT)  # same seed, same images
    device: str = knob("auto", one_of("auto", "cpu", "cuda", "mps"))


def _validate(section: str, values: Any, allowed: Mapping[str, Check]) -> None:
    if not isinstance(values, Mapping):
        raise ParameterError(f"parameters '{section}' must be a mapping of keys to values, got {values!r}.")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ParameterError(
            f"Unknown parameter(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"'{section}' accepts: {', '.join(allowed)}."
        )
    for key, value in values.items():
        predicate, description = allowed[key]
        if not predicate(value):
            raise ParameterError(
                f"Parameter {section}.{key} = {value!r} is invalid: it must be {description}."
            )


def parse_section(cls: type[T], section: str, values: Any) -> T:
    """Build the config dataclass ``cls`` from the parameter section ``section``.

    Raises:
        ParameterError: On an unknown key or a value that fails its check.
    """
    if cls is CVAEConfig:
        checks = MODEL_CHECKS
    else:
        checks = {f.name: f.metadata["check"] for f in fields(cls)}  # type: ignore[arg-type]
    _validate(section, values, checks)
    return cls(**values)


def parse_seed(seed: Any) -> int:
    if not (_is_int(seed) and seed >= 0):
        raise ParameterError(f"Parameter seed = {seed!r} is invalid: it must be an integer >= 0.")
    return seed


SECTIONS: dict[str, type] = {
    "model": CVAEConfig,
    "data_ingestion": IngestionConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "generation": GenerationConfig,
    "classifier": ClassifierConfig,
}


def validate_parameters(params: Mapping[str, Any]) -> None:
    """Check every known section of the run's parameters (used before a run starts)."""
    if "seed" in params:
        parse_seed(params["seed"])
    for section, cls in SECTIONS.items():
        if section in params:
            parse_section(cls, section, params[section])


__all__ = [
    "ClassifierConfig",
    "GenerationConfig",
    "EvaluationConfig",
    "IngestionConfig",
    "TrainingConfig",
    "parse_section",
    "parse_seed",
    "validate_parameters",
]
