"""Figures of a trained CVAE: reconstructions, generated digits, label swaps, training curves."""

from cvae_mnist.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
