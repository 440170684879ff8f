"""Training speed: the report's training loop against ours, side by side in one process.

Run from the project root after `kedro run --pipeline data_ingestion` (or any full run):

    .venv/bin/python benchmarks/train_speed.py            # part of `make benchmark`

Three loops train on the same images (the first 15,000 training images by default), one
pass each per round, in turn, over 8 rounds, after an untimed warm-up of each:

- reference: the report's published model and loop (benchmarks/_report.py: its nn_CVAE, a
  shuffling DataLoader, fp32, sigmoid + binary_cross_entropy);
- ours, report configuration: our training engine on the same architecture and settings
  (conf/report), with the speed settings `kedro run` uses (conf/base, conf/local or --env);
- ours, default configuration: our engine on the default model (conf/base, conf/local).

The ratio printed is the median of the rounds' ratios of ours (report configuration) to the
reference: the same arithmetic per image, so it measures the engine. Short rounds keep each
pair of measurements close in time on a machine whose speed drifts.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from contextlib import ExitStack

import torch
from _project import environment_parameters, non_negative_int, positive_int, project_catalog, script_parser
from _report import BATCH_SIZE, ReportCVAE, report_epoch, report_training
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from cvae_mnist.core.fastpath import accelerated
from cvae_mnist.core.model import CVAE
from cvae_mnist.core.runtime import seed_everything
from cvae_mnist.engine.recipe import cvae_trainer, steps_per_epoch
from cvae_mnist.engine.trainer import Trainer
from cvae_mnist.params import ModelParams, TrainingParams


def our_trainer(model: CVAE, training: TrainingParams, steps: int, stack: ExitStack) -> Trainer:
    """Our engine as `kedro run` sets it up on the CPU, the fast path held open on ``stack``."""
    device = torch.device("cpu")
    if training.fast_path == "auto":
        stack.enter_context(accelerated(model, device))
    return cvae_trainer(model, training, device, steps)


def flop_per_image(model: torch.nn.Module) -> float:
    """Forward + backward FLOPs of one fp32 training image, counted by torch."""
    x, y = torch.rand(BATCH_SIZE, 1, 28, 28), torch.randint(0, 10, (BATCH_SIZE,))
    with FlopCounterMode(display=False) as counter:
        out, mu, logvar = model(x, y)
        (out.sum() + mu.sum() + logvar.sum()).backward()
    return counter.get_total_flops() / BATCH_SIZE


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--rounds", type=positive_int, default=8, help="alternating rounds (default 8)")
    parser.add_argument(
        "--images", type=non_negative_int, default=15000, help="images per round (default 15000; 0 = all)"
    )
    parser.add_argument(
        "--warmup", type=positive_int, default=2000, help="images each loop trains on, untimed, first"
    )
    args = parser.parse_args()

    with project_catalog(args.env, required=("mnist_train",)) as (catalog, params):
        train = catalog.load("mnist_train")
    if args.images:
        train = {key: value[: args.images] for key, value in train.items()}
    n = len(train["labels"])
    speed = {
        k: getattr(params["training"], k) for k in ("fast_path", "mixed_precision", "compile", "num_threads")
    }
    report = environment_parameters("report")
    configurations: dict[str, tuple[ModelParams, TrainingParams]] = {
        "ours, report configuration": (report.model, report.training.model_copy(update=speed)),
        "ours, default configuration": (params["model"], params["training"]),
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {n} training images per round, batch {BATCH_SIZE}, {args.rounds} rounds; "
        f"ours: {', '.join(f'{k}={v}' for k, v in speed.items())}"
    )

    reference, optimizer, loader = report_training(train)
    generator = seed_everything(1)
    stack = ExitStack()
    trainers, flops = {}, {"reference": flop_per_image(ReportCVAE())}
    for name, (model_params, settings) in configurations.items():
        # batch 128 for all; a learning-rate schedule spans the warm-up and every round
        training = settings.model_copy(update={"batch_size": BATCH_SIZE, "epochs": args.rounds + 1})
        flops[name] = flop_per_image(CVAE(model_params))
        trainers[name] = our_trainer(CVAE(model_params), training, steps_per_epoch(n, BATCH_SIZE), stack)

    # untimed warm-up: oneDNN builds its kernels on first use, the DataLoader its workers
    warmup = {key: value[: args.warmup] for key, value in train.items()}
    report_epoch(reference, optimizer, DataLoader(TensorDataset(*warmup.values()), BATCH_SIZE))
    for trainer in trainers.values():
        trainer.train_epoch(warmup, BATCH_SIZE, generator, None)

    speeds: dict[str, list[float]] = {"reference": [], **{name: [] for name in trainers}}
    for round_number in range(1, args.rounds + 1):
        started = time.perf_counter()
        report_epoch(reference, optimizer, loader)
        speeds["reference"].append(n / (time.perf_counter() - started))
        for name, trainer in trainers.items():
            started = time.perf_counter()
            trainer.train_epoch(train, BATCH_SIZE, generator, None)
            speeds[name].append(n / (time.perf_counter() - started))
        print(
            f"round {round_number}: "
            + ", ".join(f"{name} {values[-1]:.0f} img/s" for name, values in speeds.items()),
            flush=True,
        )
    stack.close()

    print()
    for name, values in speeds.items():
        median = statistics.median(values)
        print(
            f"{name:>28}: {median:6.0f} img/s (median), {flops[name] / 1e9:.4f} GFLOP per training image "
            f"(fp32 count), {median * flops[name] / 1e9:5.1f} GFLOP/s"
        )
    ratios = [o / r for o, r in zip(speeds["ours, report configuration"], speeds["reference"])]
    print(
        f"{'training speed ratio':>28}: {statistics.median(ratios):.2f}x ours (report configuration) / reference "
        f"(median of {[round(r, 2) for r in ratios]})"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'peak resident memory':>28}: {peak:.0f} MiB (whole process)")


if __name__ == "__main__":
    main()
