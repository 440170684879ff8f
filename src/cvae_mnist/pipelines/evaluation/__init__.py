"""Metrics and figures of a trained CVAE on the test set."""

from cvae_mnist.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
