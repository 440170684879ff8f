"""The data_ingestion pipeline: ``mnist_raw`` -> ``mnist_train``, ``mnist_test``."""

from kedro.pipeline import Pipeline, node

from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                func=decode_mnist,
                inputs=["mnist_raw", "params:data_ingestion"],
                outputs=["mnist_train", "mnist_test"],
                name="decode_mnist_node",
            )
        ],
        namespace="data_ingestion",  # one box per pipeline in Kedro-Viz; dataset names stay
        prefix_datasets_with_namespace=False,
    )
