"""Sampling noise of the generation metrics: one trained model, several generation seeds.

Run from the project root after a full run:

    .venv/bin/python benchmarks/generation_noise.py                       # the default run's model
    .venv/bin/python benchmarks/generation_noise.py --env ablation --seeds 1 2 3 4 5

`cond_accuracy` and `fid` are measured on digits drawn from the model's prior, so they
change with the seed of those draws even for the same weights. This script runs the
evaluation's `evaluate_generation` node on the model of an environment (`cvae_model`,
judged by its `digit_classifier`) once per seed and prints each row and the spread,
which is how far apart two runs' `fid` may be by sampling alone. Nothing is written.
"""

from __future__ import annotations

import statistics

from _project import non_negative_int, project_catalog, script_parser

from cvae_mnist.pipelines.evaluation.nodes import evaluate_generation


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--seeds", type=non_negative_int, nargs="+", default=[1, 2, 3, 4, 5], help="generation seeds"
    )
    args = parser.parse_args()

    required = ("cvae_model", "digit_classifier", "mnist_train", "mnist_test")
    with project_catalog(args.env, required) as (catalog, params):
        model = catalog.load("cvae_model")
        classifier = catalog.load("digit_classifier").read()
        train, test = catalog.load("mnist_train"), catalog.load("mnist_test")

    rows = {}
    for seed in args.seeds:
        row = evaluate_generation(model, classifier, train, test, params["evaluation"], seed).iloc[0]
        rows[seed] = row
        print(f"seed {seed}: cond_accuracy {row['cond_accuracy']:.4f}, fid {row['fid']:.2f}", flush=True)
    for column in ("cond_accuracy", "fid"):
        values = [row[column] for row in rows.values()]
        mean = statistics.mean(values)
        print(
            f"{column}: mean {mean:.4f}, min {min(values):.4f}, max {max(values):.4f}, "
            f"spread (max - min) {100 * (max(values) - min(values)) / mean:.1f} % of the mean"
        )


if __name__ == "__main__":
    main()
