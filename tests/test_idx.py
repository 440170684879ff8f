import numpy as np
import pytest

from cvae_mnist.core.idx import encode_idx, parse_idx
from cvae_mnist.errors import DataError


def test_roundtrip_keeps_shape_and_values():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    decoded = parse_idx(encode_idx(images), "x", ndim=3)
    np.testing.assert_array_equal(decoded, images)


def test_header_is_the_mnist_one():
    data = encode_idx(np.zeros((5, 28, 28), np.uint8))
    assert data[:16] == bytes.fromhex("00000803000000050000001c0000001c")


def test_bad_magic_number_names_the_file():
    data = bytearray(encode_idx(np.zeros(3, np.uint8)))
    data[2] = 0x0D  # float32 type code
    with pytest.raises(
        DataError, match=r"labels-file: bad IDX magic number 0x00000d01 \(expected 0x00000801\)"
    ):
        parse_idx(bytes(data), "labels-file", ndim=1)


def test_images_file_given_as_labels_is_rejected():
    with pytest.raises(DataError, match="bad IDX magic number"):
        parse_idx(encode_idx(np.zeros((2, 28, 28), np.uint8)), "f", ndim=1)


def test_gzipped_file_is_rejected_with_a_hint():
    with pytest.raises(DataError, match="still gzipped"):
        parse_idx(b"\x1f\x8b\x08\x00" + bytes(20), "f.gz", ndim=1)


def test_truncated_file_is_rejected():
    data = encode_idx(np.zeros((4, 28, 28), np.uint8))[:-10]
    with pytest.raises(DataError, match=r"images: .*\(4, 28, 28\).*3152 bytes.*truncated"):
        parse_idx(data, "images", ndim=3)


def test_file_shorter_than_its_header_is_rejected():
    with pytest.raises(DataError, match="too short for an IDX header"):
        parse_idx(b"\x00\x00", "f", ndim=3)


def test_trailing_bytes_are_rejected():
    with pytest.raises(DataError, match="damaged"):
        parse_idx(encode_idx(np.zeros(3, np.uint8)) + b"x", "f", ndim=1)
