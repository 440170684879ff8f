import numpy as np
import pytest
import torch

from cvae_mnist.core.idx import encode_idx
from cvae_mnist.errors import DataError
from cvae_mnist.params import IngestionParams
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist


def test_decodes_both_splits_to_tensors(tiny_raw):
    train, test = decode_mnist(tiny_raw, IngestionParams())
    assert train["images"].shape == (120, 1, 28, 28) and test["images"].shape == (40, 1, 28, 28)
    assert train["images"].dtype == torch.float32 and train["labels"].dtype == torch.int64
    assert train["images"].min() >= 0 and train["images"].max() == 1.0
    assert train["labels"].tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_limits_keep_the_first_images(tiny_raw):
    train, test = decode_mnist(tiny_raw, IngestionParams(n_train=10, n_test=5))
    full_train, _ = decode_mnist(tiny_raw, IngestionParams())
    assert len(train["labels"]) == 10 and len(test["labels"]) == 5
    assert torch.equal(train["images"], full_train["images"][:10])


def test_image_and_label_counts_must_agree(tiny_raw):
    tiny_raw["t10k-labels-idx1-ubyte"] = encode_idx(np.zeros(39, np.uint8))
    with pytest.raises(
        DataError, match="t10k-images-idx3-ubyte holds 40 images but t10k-labels-idx1-ubyte holds 39 labels"
    ):
        decode_mnist(tiny_raw, IngestionParams())


def test_labels_outside_0_to_9_are_rejected(tiny_raw):
    tiny_raw["train-labels-idx1-ubyte"] = encode_idx(np.full(120, 11, np.uint8))
    with pytest.raises(DataError, match="holds label 11; MNIST labels are 0-9"):
        decode_mnist(tiny_raw, IngestionParams())
