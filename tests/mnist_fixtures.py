"""Tiny synthetic MNIST-like IDX files for tests: real code, fake data, no network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cvae_mnist.datasets.mnist_raw_dataset import MNIST_FILES
from cvae_mnist.idx import encode_idx


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images whose class ``c`` is a bright bar at row ``2 + 2c``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 10
    images = rng.integers(0, 30, size=(n, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        row = 2 + 2 * int(label)
        image[row : row + 3, 4 + rng.integers(0, 4) : 24] = 255
    return images, labels


def tiny_mnist_files(n_train: int = 120, n_test: int = 40) -> dict[str, bytes]:
    """The four IDX files' bytes, by file name."""
    train_images, train_labels = synthetic_digits(n_train, seed=0)
    test_images, test_labels = synthetic_digits(n_test, seed=1)
    arrays = (train_images, train_labels, test_images, test_labels)
    return {name: encode_idx(array) for name, array in zip(MNIST_FILES, arrays)}


def write_tiny_mnist(folder: Path, **sizes: int) -> dict[str, str]:
    """Write the tiny IDX files into ``folder``; return their SHA-256 by name."""
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, data in tiny_mnist_files(**sizes).items():
        (folder / name).write_bytes(data)
        checksums[name] = hashlib.sha256(data).hexdigest()
    return checksums
