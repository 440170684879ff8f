"""Training on several processes launched by ``torchrun``: joining the job, and the messages
and tensors between its processes (docs/architecture.md). No Kedro here."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from cvae_mnist.core.runtime import World
from cvae_mnist.errors import CvaeMnistError, DistributedError

logger = logging.getLogger(__name__)

# rank 0 sends a command when its training node starts, and may run data ingestion and a
# long evaluation in between: the other ranks wait that long for it
COMMAND_TIMEOUT = timedelta(hours=12)
# a collective of the training itself that waits longer than this means a rank is stuck
TRAINING_TIMEOUT = timedelta(minutes=30)


def from_environment() -> World:
    """The world torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


class _Job:
    """The torchrun job this process joined, if any."""

    world = World()
    training_group: Any = None


def current() -> World:
    """The world of this process: one process unless :func:`start` joined a torchrun job."""
    return _Job.world


def start(world: World) -> None:
    """Join the torchrun job's process group: gloo for CPU tensors, NCCL for CUDA ones."""
    backend = "gloo"
    if torch.cuda.is_available():
        # NCCL's collectives run on the current GPU: this rank's own, where it has one (a rank
        # without one trains on the CPU or is refused in World.device, never indexes past the last)
        if world.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(world.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=COMMAND_TIMEOUT)
    _Job.training_group = dist.new_group(timeout=TRAINING_TIMEOUT, backend=backend)
    _Job.world = world


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    _Job.world, _Job.training_group = World(), None


def training_group() -> Any:
    return _Job.training_group


def send(command: str, payload: Any = None) -> None:
    """Rank 0: hand the other ranks a command (``train`` with its arguments, or ``stop``)."""
    dist.broadcast_object_list([command, payload], src=0)


def receive() -> tuple[str, Any]:
    """Another rank: wait for rank 0's next command."""
    message: list[Any] = [None, None]
    try:
        dist.broadcast_object_list(message, src=0)
    except (RuntimeError, pickle.UnpicklingError) as error:
        raise DistributedError(
            f"rank {current().rank}: rank 0 (which runs the pipeline) stopped or cannot be reached "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    return message[0], message[1]


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, keys: list[tuple[str, tuple, str]]) -> dict:
    """Rank 0's tensors on every rank: ``tensors`` on rank 0, None elsewhere; ``keys`` lists
    each one's name, shape and dtype (sent beforehand with the command)."""
    out = {}
    for name, shape, dtype in keys:
        tensor = (
            tensors[name].contiguous()
            if tensors is not None
            else torch.empty(shape, dtype=getattr(torch, dtype))
        )
        dist.broadcast(tensor, src=0, group=_Job.training_group)
        out[name] = tensor
    return out


def tensor_keys(tensors: dict[str, torch.Tensor]) -> list[tuple[str, tuple, str]]:
    return [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (``values`` itself in one process)."""
    if _Job.world.size > 1:
        dist.all_reduce(values, group=_Job.training_group)
    return values


@contextmanager
def peer_failures_named(world: World) -> Iterator[None]:
    """torch.distributed reports a peer that died or went silent (gloo, NCCL, the store) as a
    ``DistError``: say so in one line (torchrun's summary names the process)."""
    try:
        yield
    except RuntimeError as error:
        if world.size == 1 or isinstance(error, CvaeMnistError) or not isinstance(error, dist.DistError):
            raise  # one process, our own error, or not a failure torch.distributed reports as one
        raise DistributedError(
            f"Training stopped on rank {world.rank} of {world.size}: another process of this torchrun "
            f"job stopped or stopped answering ({str(error).splitlines()[0]}). torchrun's summary "
            "names the process that failed; the checkpoint of the last complete epoch is kept."
        ) from None
