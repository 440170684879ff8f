"""The generation pipeline: ``cvae_model`` -> generated digits and their grid."""

from kedro.pipeline import Pipeline, node

from cvae_mnist.pipelines.generation.nodes import generate_digits, plot_generated


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                func=generate_digits,
                inputs=["cvae_model", "params:generation"],
                outputs="generated_digits",
                name="generate_digits_node",
            ),
            node(
                func=plot_generated,
                inputs="generated_digits",
                outputs="generation_figure",
                name="plot_generated_node",
            ),
        ],
        namespace="generation",  # one box per pipeline in Kedro-Viz; dataset names stay
        prefix_datasets_with_namespace=False,
    )
