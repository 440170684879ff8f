"""Helpers of the benchmark scripts: the CPU round-trip probe and the checks of numeric options."""

import argparse
import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _placement import cpu_round_trip_ns  # noqa: E402
from _project import non_negative_int, positive_int, positive_seconds  # noqa: E402

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


def test_numeric_options_take_numbers_in_range():
    assert positive_int("8") == 8 and non_negative_int("0") == 0 and positive_seconds("1.5") == 1.5


@pytest.mark.parametrize(
    ("check", "text"),
    [
        (positive_int, "0"),
        (positive_int, "2.5"),
        (non_negative_int, "-1"),
        (positive_seconds, "0.5"),
        (positive_int, "x"),
    ],
)
def test_numeric_options_refuse_the_rest_with_a_message(check, text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"not '{text}'"):
        check(text)
