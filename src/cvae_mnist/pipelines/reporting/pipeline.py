"""The reporting pipeline: the figures (``kedro run --pipeline reporting`` redraws them; the
evaluation pipeline includes it)."""

from kedro.pipeline import Pipeline, node

from cvae_mnist.pipelines.reporting.nodes import (
    plot_generated_digits,
    plot_label_swap,
    plot_latent_interpolation,
    plot_reconstructions,
    plot_training_curves,
    plot_worst_reconstructions,
)

# figure name -> the node that draws it and its inputs; each lands in "{name}_figure"
FIGURES = {
    "reconstructions": (plot_reconstructions, ["test_reconstructions", "mnist_test", "params:evaluation"]),
    "worst_reconstructions": (
        plot_worst_reconstructions,
        ["test_reconstructions", "mnist_test", "params:evaluation"],
    ),
    "generated_digits": (plot_generated_digits, ["cvae_model", "params:evaluation", "params:seed"]),
    "latent_interpolation": (plot_latent_interpolation, ["cvae_model", "mnist_test", "params:evaluation"]),
    "label_swap": (
        plot_label_swap,
        ["cvae_model", "mnist_test", "params:evaluation", "label_swap_metrics"],
    ),
    "training_curves": (plot_training_curves, ["training_history", "params:training"]),
}


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(func=plot, inputs=inputs, outputs=f"{name}_figure", name=f"plot_{name}_node")
            for name, (plot, inputs) in FIGURES.items()
        ],
        namespace="reporting",
        prefix_datasets_with_namespace=False,
    )
