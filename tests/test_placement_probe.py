"""The CPU round-trip probe printed by benchmarks/train_speed.py."""

import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _placement import cpu_round_trip_ns  # noqa: E402

pinnable = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,  # noqa: PLR2004
    reason="needs two CPUs that can be pinned (Linux)",
)


@pinnable
def test_the_probe_measures_a_round_trip_and_gives_back_every_cpu():
    before = os.sched_getaffinity(0)
    nanoseconds = cpu_round_trip_ns(trips=2000)
    assert nanoseconds is not None and math.isfinite(nanoseconds) and nanoseconds > 0
    assert os.sched_getaffinity(0) == before


@pinnable
def test_the_probe_needs_two_cpus():
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        assert cpu_round_trip_ns(trips=100) is None
    finally:
        os.sched_setaffinity(0, before)
