"""Generate digits on demand from the trained CVAE."""

from cvae_mnist.pipelines.generation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
