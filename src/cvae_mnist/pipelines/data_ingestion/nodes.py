"""Nodes of the data_ingestion pipeline."""

from __future__ import annotations

import numpy as np
import torch

from cvae_mnist.core.idx import parse_idx
from cvae_mnist.core.schema import Split
from cvae_mnist.errors import DataError
from cvae_mnist.params import DIGITS, IngestionParams


def _decode_split(raw: dict[str, bytes], prefix: str, limit: int | None) -> Split:
    images_name, labels_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = parse_idx(raw[images_name], images_name, ndim=3)
    labels = parse_idx(raw[labels_name], labels_name, ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_name} holds {len(images)} images but {labels_name} holds "
            f"{len(labels)} labels; the two files do not belong together."
        )
    if labels.size and labels.max() >= DIGITS:
        raise DataError(f"{labels_name} holds label {labels.max()}; MNIST labels are 0-9.")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return {
        "images": torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
        "labels": torch.from_numpy(labels.astype(np.int64)),
    }


def decode_mnist(mnist_raw: dict[str, bytes], data_ingestion: IngestionParams) -> tuple[Split, Split]:
    """The raw IDX files' bytes decoded into the train and test sets, each
    ``{"images": float32 [N, 1, 28, 28] in [0, 1], "labels": int64 [N]}``, cut to the first
    ``data_ingestion.n_train`` / ``n_test`` images where those are set."""
    return (
        _decode_split(mnist_raw, "train", data_ingestion.n_train),
        _decode_split(mnist_raw, "t10k", data_ingestion.n_test),
    )
