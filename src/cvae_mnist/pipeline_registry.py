"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

DEFAULT_PIPELINES = ("data_ingestion", "training", "evaluation")


def register_pipelines() -> dict[str, Pipeline]:
    """Each pipeline by its folder name, and ``__default__``: ingestion, training, evaluation."""
    pipelines = find_pipelines(raise_errors=True)
    # `kedro run --pipeline X` makes find_pipelines import only X: no default then.
    if all(name in pipelines for name in DEFAULT_PIPELINES):
        pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT_PIPELINES), Pipeline([]))
    return pipelines
