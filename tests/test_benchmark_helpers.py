"""Helpers of the benchmark scripts: the checks of numeric options, the environments' parameters."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _project import environment_parameters, non_negative_int, positive_int, positive_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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


def test_an_environments_parameters_are_read_over_base(monkeypatch):
    monkeypatch.chdir(REPO)
    report = environment_parameters("report")
    assert report.model.conditioning == "one_hot" and report.training.beta == 1.0
    assert report.evaluation == environment_parameters("base").evaluation  # not pinned: from conf/base
