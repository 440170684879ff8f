"""Read and write the IDX format of the MNIST files (a big-endian header, then the array's
unsigned bytes; http://yann.lecun.com/exdb/mnist/)."""

from __future__ import annotations

import struct

import numpy as np

from cvae_mnist.errors import DataError

_UBYTE = 0x08


def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """The ``ndim``-dimensional read-only ``uint8`` array of an IDX file's bytes; a
    :class:`DataError` naming the file ``name`` if its magic number, type or size is wrong."""
    if len(data) < 4 + 4 * ndim:
        raise DataError(
            f"{name}: {len(data)} bytes is too short for an IDX header; "
            "the file is truncated. Delete it and run again to fetch a fresh copy."
        )
    zero, type_code, file_ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code != _UBYTE or file_ndim != ndim:
        magic = int.from_bytes(data[:4], "big")
        expected = (_UBYTE << 8) | ndim
        raise DataError(
            f"{name}: bad IDX magic number 0x{magic:08x} (expected 0x{expected:08x}); "
            "this is not an MNIST IDX file of that kind, or it is still gzipped."
        )
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected_size = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_size:
        raise DataError(
            f"{name}: the header declares shape {shape} ({expected_size} bytes) "
            f"but the file has {len(data)} bytes; the file is truncated or damaged. "
            "Delete it and run again to fetch a fresh copy."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """A ``uint8`` array as an IDX file's bytes (the inverse of :func:`parse_idx`)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, _UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()
