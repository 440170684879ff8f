"""Device choice, seeding, progress bars, and this process's place in a torchrun job: where,
how reproducibly, how visibly and with whom torch runs."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from cvae_mnist.errors import DistributedError

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


AMPERE = 8  # the first CUDA compute capability with bf16 tensor cores and cuDNN's bf16 convolutions


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype worth using on ``device``, or None where it would not pay.

    bf16 on a CPU with native bf16 instructions (AVX512-BF16 or AMX) and on a CUDA GPU
    that computes it natively (compute capability 8.0 and up: A100, H100, RTX 30xx and
    later); None elsewhere: older CPUs emulate bf16 slowly, cuDNN has no bf16 convolutions
    on a T4 or V100 (which ``is_bf16_supported()`` reports as supported, by emulation),
    and MPS is left in fp32.
    """
    if device.type == "cpu":
        native = (
            getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        )
        return torch.bfloat16 if native else None
    if device.type == "cuda" and (torch.version.hip or torch.cuda.get_device_capability(device)[0] >= AMPERE):
        return torch.bfloat16
    return None


def deterministic_algorithms(device: torch.device, on: bool) -> None:
    """On a GPU, with ``on``: the same result for the same inputs, run after run (cuDNN's
    deterministic kernels, no autotuning, no TF32 convolutions), at some cost in speed.
    Off: cuDNN picks its fastest kernels, some of which add in a varying order. The CPU
    is deterministic either way."""
    if device.type != "cuda":
        return
    if on:  # cuBLAS needs a fixed workspace to be deterministic; set before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.allow_tf32 = not on


def progress(items: Iterable[T], total: int, description: str | None) -> Iterator[T] | Iterable[T]:
    """``items`` with a progress bar named ``description`` (none if it is None). In a terminal it
    redraws every second; in a log (not a terminal) it writes a line every 30 s at most."""
    if description is None:
        return items
    interval = 1.0 if sys.stderr.isatty() else 30.0
    return tqdm(items, total=total, desc=description, unit="batch", mininterval=interval, leave=False)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one training: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (all of it in one process)."""
        if self.size == 1:
            return batch
        n = len(batch) // self.size
        return batch[self.rank * n : (self.rank + 1) * n]

    def device(self, device: torch.device) -> torch.device:
        """This rank's own GPU when it trains on CUDA, else ``device`` itself.

        Raises:
            DistributedError: If the machine has fewer GPUs than processes (NCCL needs one
                GPU per process), or the device is MPS (gloo holds CPU and CUDA tensors only).
        """
        if self.size == 1:
            return device
        if device.type == "mps":
            raise DistributedError(
                "torchrun cannot train on Apple's MPS: its gloo backend holds CPU and CUDA tensors "
                "only. Run one process, or set training.device=cpu under torchrun."
            )
        if device.type == "cuda":
            gpus = torch.cuda.device_count()
            if self.local_rank >= gpus:
                raise DistributedError(
                    f"torchrun started process {self.local_rank} on this machine, which has {gpus} "
                    f"GPU{'s' if gpus != 1 else ''}: NCCL needs one GPU per process. Start at most "
                    f"{gpus} per machine (--nproc_per_node {gpus}), or set training.device=cpu."
                )
            return torch.device("cuda", self.local_rank)
        return device
