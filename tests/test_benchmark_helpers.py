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


def test_conf_report_trains_the_reports_published_architecture(monkeypatch):
    """The benchmarks' reference (the report's nn_CVAE as published) and our CVAE under
    conf/report: the same layers, shapes and forward pass, so the same arithmetic."""
    import torch  # noqa: PLC0415
    from _report import ReportCVAE  # noqa: PLC0415

    from cvae_mnist.core.model import CVAE  # noqa: PLC0415

    monkeypatch.chdir(REPO)
    ours, theirs = CVAE(environment_parameters("report").model), ReportCVAE()
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    for mine, published in zip(ours.parameters(), theirs.parameters()):
        mine.data.copy_(published.data)
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    mu, logvar = ours.encode(x, y)
    torch.testing.assert_close((mu, logvar), theirs.encode(x, y))
    torch.testing.assert_close(torch.sigmoid(ours.decode(mu, y)), theirs.decode(mu, y))
