"""Device choice, seeding and progress bars: where, how reproducibly and how visibly torch runs."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")


def select_device(name: str = "auto") -> torch.device:
    """Return the requested device; ``auto`` picks CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but CUDA is not available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' was requested but MPS is not available here")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    return torch.Generator().manual_seed(seed)


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype worth using on ``device``, or None where it would not pay.

    bf16 on a CPU with native bf16 instructions (AVX512-BF16 or AMX) and on a CUDA GPU
    that supports it; None elsewhere (older CPUs emulate bf16 slowly; MPS is left in fp32).
    """
    if device.type == "cpu":
        native = (
            getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        )
        return torch.bfloat16 if native else None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def progress(items: Iterable[T], total: int, description: str | None) -> Iterator[T] | Iterable[T]:
    """``items`` with a progress bar named ``description`` (none if it is None). In a terminal it
    redraws every second; in a log (not a terminal) it writes a line every 30 s at most."""
    if description is None:
        return items
    interval = 1.0 if sys.stderr.isatty() else 30.0
    return tqdm(items, total=total, desc=description, unit="batch", mininterval=interval, leave=False)
