"""MNIST raw IDX files to image and label tensors."""

from cvae_mnist.pipelines.data_ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
