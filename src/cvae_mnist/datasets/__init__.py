"""Custom Kedro datasets, in the style of kedro-datasets."""

from cvae_mnist.datasets.atomic_dataset import AtomicDataset
from cvae_mnist.datasets.generator_dataset import GeneratorModelDataset
from cvae_mnist.datasets.mnist_raw_dataset import MNISTRawDataset
from cvae_mnist.datasets.torch_dataset import CheckpointDataset, CheckpointFile, CVAEDataset, TorchDataset

__all__ = [
    "AtomicDataset",
    "CVAEDataset",
    "CheckpointDataset",
    "CheckpointFile",
    "GeneratorModelDataset",
    "MNISTRawDataset",
    "TorchDataset",
]
