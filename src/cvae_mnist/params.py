"""The parameters of ``conf/*/parameters.yml``, one strict Pydantic model per section, with the
defaults of ``conf/base/parameters.yml`` (tests/test_params.py holds them together). No Kedro here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Device = Literal["auto", "cpu", "cuda", "mps"]
DIGITS = 10  # MNIST's classes


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class IngestionParams(Section):
    n_train: int | None = Field(None, ge=1, description="keep the first n training images; null = all")
    n_test: int | None = Field(None, ge=1, description="keep the first n test images; null = all")


class ModelParams(Section):
    architecture: Literal["two_stage", "report"] = Field(
        "two_stage",
        description="two_stage: two stride-2 convolutions down to 7x7; "
        "report: the report's three, down to 3x3",
    )
    image_size: Literal[28] = Field(28, description="MNIST's images are 28x28")
    num_classes: Literal[10] = Field(10, description="MNIST's ten digits")
    latent_dim: int = Field(100, ge=1, le=1024, description="size of z")
    base_channels: int = Field(32, ge=1, le=256, description="channels of the first convolution")
    conditioning: Literal["one_hot", "embedding"] = Field("one_hot", description="how the label is fed")
    embedding_dim: int = Field(16, ge=1, le=256, description="size of the learned label embedding")
    normalization: Literal["none", "batch"] = Field("none", description="after the inner convolutions")
    residual_blocks: int = Field(0, ge=0, le=8, description="3x3 residual blocks at the deepest resolution")
    decoder_conditioning: Literal["input", "every_stage"] = Field(
        "every_stage",
        description="input: the label joins z at the decoder's input (the report); "
        "every_stage: also scales and shifts the features after every decoder stage (FiLM)",
    )


class PriorParams(Section):
    kind: Literal["standard_normal", "mixture", "flow"] = Field(
        "mixture", description="p(z | y): N(0, I) (the report), Gaussians per class, or a conditional flow"
    )
    components: int = Field(10, ge=1, le=32, description="Gaussians per class of a mixture")
    flow_transforms: int = Field(4, ge=1, le=16, description="autoregressive transforms of the flow")
    flow_hidden: int = Field(256, ge=8, le=4096, description="units of each hidden layer of the flow")
    pseudo_inputs: int = Field(
        0, ge=0, le=6000, description="training images per class whose posteriors join the prior; 0: none"
    )
    pseudo_weight: float = Field(0.8, ge=0, le=1, description="the share of those posteriors in the prior")
    epochs: int = Field(10, ge=1, le=1000, description="passes of the flow over the encoded training set")
    batch_size: int = Field(512, ge=1, le=60_000)
    lr: float = Field(
        1e-3, gt=0, allow_inf_nan=False, description="Adam's rate for the flow, cosine-annealed"
    )


class TrainingParams(Section):
    batch_size: int = Field(128, ge=1, le=60_000)
    test_batch_size: int = Field(128, ge=1, le=60_000)
    epochs: int = Field(8, ge=1, le=1000)
    lr: float = Field(4e-3, gt=0, allow_inf_nan=False, description="Adam's learning rate (a schedule's peak)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam's beta1: the report's momentum 0.9")
    loss: Literal["bce", "mse"] = Field("bce", description="reconstruction term")
    beta: float = Field(0.2, ge=0, allow_inf_nan=False, description="weight of the KL term")
    kl_warmup_epochs: float = Field(0.0, ge=0, allow_inf_nan=False)
    adversary_weight: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="weight of the reversed gradient of a classifier that reads the label from mu",
    )
    swap_weight: float = Field(
        2.0,
        ge=0,
        allow_inf_nan=False,
        description="weight of a critic's loss on codes decoded under other labels",
    )
    swap_fraction: float = Field(
        0.125, gt=0, le=1, allow_inf_nan=False, description="share of each batch swapped"
    )
    lr_schedule: Literal["constant", "onecycle", "cosine"] = "onecycle"
    augment_rotation: float = Field(0.0, ge=0, le=180, description="random rotation, up to +- degrees")
    augment_shift: float = Field(0.0, ge=0, le=14, description="random shift, up to +- pixels")
    device: Device = "auto"
    resume: bool = Field(False, description="continue from the last complete epoch's checkpoint")
    fast_path: Literal["auto", "off"] = Field(
        "auto", description="auto: the faster layer forms measured on this device (CPU); off: plain layers"
    )
    mixed_precision: bool = Field(True, description="bf16 autocast where the hardware computes bf16")
    compile: bool = Field(False, description="torch.compile the training step")
    deterministic: bool = Field(
        False, description="on a GPU: deterministic kernels, so that a resumed run ends bit for bit (slower)"
    )
    num_threads: int = Field(0, ge=0, le=1024, description="torch CPU threads; 0 = one per core")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "sqrt", description="under torchrun, lr times N (linear) or sqrt(N) for N times the batch"
    )


class EvaluationParams(Section):
    batch_size: int = Field(1000, ge=1, le=60_000)
    device: Device = "auto"
    iw_samples: int = Field(50, ge=1, le=5000, description="importance samples per test image")
    samples_per_class: int = Field(1000, ge=2, le=100_000, description="generated digits per class")
    images_per_class: int = Field(3, ge=1, le=100, description="real/reconstructed pairs per class")
    generated_per_class: int = Field(10, ge=1, le=100, description="digits per row of the generated grid")
    interpolation_steps: int = Field(10, ge=2, le=100, description="points on each interpolation path")
    worst_examples: int = Field(12, ge=1, le=100, description="digits in the worst-reconstructions figure")


class GenerationParams(Section):
    digit: int | None = Field(None, ge=0, le=9, description="0-9, or null for all ten digits")
    n_samples: int = Field(16, ge=1, le=10_000, description="images per digit")
    seed: int = Field(0, ge=0, lt=2**32, description="same seed, same images")
    device: Device = "auto"


class ClassifierParams(Section):
    epochs: int = Field(5, ge=1, le=100)
    batch_size: int = Field(128, ge=1, le=60_000)
    lr: float = Field(3e-3, gt=0, allow_inf_nan=False, description="peak of the one-cycle schedule")
    seed: int = Field(1, ge=0, lt=2**32, description="its own seed: the top-level seed keeps the same judge")


class ProjectParameters(Section):
    """The whole of ``parameters.yml``: Kedro validates each section where a node reads it;
    this model checks what no node's type hint covers, the top-level keys and the seed."""

    seed: int = Field(
        1, ge=0, lt=2**32, description="seeds weights, shuffling and latent samples (NumPy takes 32 bits)"
    )
    data_ingestion: IngestionParams = IngestionParams()
    model: ModelParams = ModelParams()
    prior: PriorParams = PriorParams()
    training: TrainingParams = TrainingParams()
    evaluation: EvaluationParams = EvaluationParams()
    generation: GenerationParams = GenerationParams()
    classifier: ClassifierParams = ClassifierParams()
