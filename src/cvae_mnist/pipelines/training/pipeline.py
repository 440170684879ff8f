"""The training pipeline: ``mnist_train``, ``mnist_test`` -> ``cvae_model``."""

from kedro.pipeline import Pipeline, node

from cvae_mnist.pipelines.training.nodes import (
    build_generator,
    fit_prior,
    train_cvae,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                func=train_cvae,
                inputs=[
                    "mnist_train",
                    "mnist_test",
                    "training_checkpoint",
                    "params:model",
                    "params:training",
                    "params:seed",
                ],
                outputs=["trained_cvae", "training_history"],
                name="train_cvae_node",
            ),
            node(
                func=fit_prior,
                inputs=["trained_cvae", "mnist_train", "params:prior", "params:training", "params:seed"],
                outputs=["cvae_model", "prior_metrics"],
                name="fit_prior_node",
            ),
            node(
                func=build_generator,
                inputs="cvae_model",
                outputs="cvae_generator",
                name="build_generator_node",
            ),
        ],
        namespace="training",  # one box per pipeline in Kedro-Viz; dataset names stay
        prefix_datasets_with_namespace=False,
    )
