"""Train the conditional VAE."""

from cvae_mnist.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
