"""Custom Kedro datasets, in the style of kedro-datasets."""

from cvae_mnist.datasets.mnist_raw_dataset import MNISTRawDataset
from cvae_mnist.datasets.torch_dataset import TorchDataset

__all__ = ["MNISTRawDataset", "TorchDataset"]
