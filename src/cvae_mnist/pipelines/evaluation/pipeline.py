"""The evaluation pipeline: ``cvae_model``, ``mnist_test`` -> metrics, then the figures
(the reporting pipeline, run with it)."""

from kedro.pipeline import Pipeline, node

from cvae_mnist.pipelines.evaluation.nodes import (
    assemble_metrics,
    evaluate_generation,
    evaluate_label_swap,
    evaluate_likelihood,
    evaluate_reconstructions,
    get_digit_classifier,
    metrics_to_mlflow,
    reconstruct_test_set,
)
from cvae_mnist.pipelines.reporting import create_pipeline as reporting


def create_pipeline(**kwargs) -> Pipeline:
    return (
        Pipeline(
            [
                node(
                    func=reconstruct_test_set,
                    inputs=["cvae_model", "mnist_test", "params:evaluation"],
                    outputs="test_reconstructions",
                    name="reconstruct_test_set_node",
                ),
                node(
                    func=evaluate_reconstructions,
                    inputs=["test_reconstructions", "mnist_test"],
                    outputs="reconstruction_metrics",
                    name="evaluate_reconstructions_node",
                ),
                node(
                    func=evaluate_likelihood,
                    inputs=["cvae_model", "mnist_test", "params:evaluation", "params:seed"],
                    outputs="likelihood_metrics",
                    name="evaluate_likelihood_node",
                ),
                node(
                    func=get_digit_classifier,
                    inputs=[
                        "digit_classifier",
                        "mnist_train",
                        "mnist_test",
                        "params:classifier",
                        "params:data_ingestion",
                        "params:evaluation",
                    ],
                    outputs="trained_digit_classifier",
                    name="get_digit_classifier_node",
                ),
                node(
                    func=evaluate_generation,
                    inputs=[
                        "cvae_model",
                        "trained_digit_classifier",
                        "mnist_train",
                        "mnist_test",
                        "params:evaluation",
                        "params:seed",
                    ],
                    outputs="generation_metrics",
                    name="evaluate_generation_node",
                ),
                node(
                    func=evaluate_label_swap,
                    inputs=["cvae_model", "trained_digit_classifier", "mnist_test", "params:evaluation"],
                    outputs="label_swap_metrics",
                    name="evaluate_label_swap_node",
                ),
                node(
                    func=assemble_metrics,
                    inputs=[
                        "reconstruction_metrics",
                        "likelihood_metrics",
                        "generation_metrics",
                        "label_swap_metrics",
                    ],
                    outputs="metrics",
                    name="assemble_metrics_node",
                ),
                node(
                    func=metrics_to_mlflow,
                    inputs="metrics",
                    outputs="test_metrics",
                    name="log_metrics_node",
                ),
            ],
            namespace="evaluation",  # one box per pipeline in Kedro-Viz; dataset names stay
            prefix_datasets_with_namespace=False,
        )
        + reporting()
    )  # `kedro run --pipeline evaluation` also draws the figures
