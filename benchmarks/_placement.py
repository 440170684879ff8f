"""How far apart the host has placed two of our CPUs: the round trip of one cache line.

On a shared virtual machine the host may run our two vCPUs on cores that share a
last-level cache or on cores that do not (another CCD or socket); a cache line then
crosses between them several times slower, and so does every tensor that one thread
writes and the other reads. A training step of many small ops is hit hardest. The
benchmark prints this round trip beside every round so a slow round can be told from a
slow loop.

The probe is plain Python (two processes pinned to two CPUs, bouncing one byte of shared
memory), so its figure includes the interpreter's own cost: compare figures of the same
machine with each other, not with published cache latencies. On the 2-core AMD EPYC VM
we measured about 200-270 ns with both CPUs close and about 330-440 ns apart, where a
C program measured 50-70 ns and 300-340 ns.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time


def _pong(buffer: mmap.mmap, cpu: int, trips: int) -> None:
    os.sched_setaffinity(0, {cpu})
    for _ in range(trips):
        while buffer[0] != 1:
            pass
        buffer[0] = 0


def cpu_round_trip_ns(trips: int = 20000) -> float | None:
    """Mean round trip, in ns, of one byte bounced between the first two CPUs we may use;
    ``None`` where CPUs cannot be pinned (not Linux) or there is only one."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:  # noqa: PLR2004 - a pair of CPUs
        return None
    buffer = mmap.mmap(-1, 64)
    partner = multiprocessing.get_context("fork").Process(target=_pong, args=(buffer, allowed[1], trips))
    partner.start()
    try:
        os.sched_setaffinity(0, {allowed[0]})
        buffer[0] = 1
        while buffer[0] != 0:  # the first trip waits for the partner to start
            pass
        started = time.perf_counter()
        for _ in range(trips - 1):
            buffer[0] = 1
            while buffer[0] != 0:
                pass
        return (time.perf_counter() - started) / (trips - 1) * 1e9
    finally:
        os.sched_setaffinity(0, set(allowed))
        partner.join()
