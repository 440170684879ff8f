"""Training speed: the report's training loop against ours, side by side in one process.

Run from the project root after `kedro run --pipeline data_ingestion` (or any full run):

    .venv/bin/python benchmarks/train_speed.py            # or: make benchmark

Both loops train the report configuration's CVAE (conf/report, batch 128) on the same images (the
first 15,000 training images by default), one pass per round, alternating reference and
ours over 8 rounds; the ratio printed is the median of the rounds' ratios. Short rounds
keep each pair of measurements close in time on a machine whose speed drifts. Ours uses
the speed settings of the `training` parameters exactly as `kedro run` does (conf/base,
plus conf/local or --env); our engine training the default architecture (`model`
parameters) is timed in the same rounds and printed beside.
The evaluation node (the report's five metrics over the test set) and the ingestion
node are timed too, and each loop's CPU time (user and system) and minor page faults per
batch are printed: system time is mostly the kernel handing out fresh pages.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from _project import environment_parameters, non_negative_int, positive_int, project_catalog, script_parser
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from cvae_mnist.fastpath import accelerated
from cvae_mnist.model import CVAE
from cvae_mnist.params import ModelParams, TrainingParams
from cvae_mnist.pipelines.data_ingestion.nodes import decode_mnist
from cvae_mnist.pipelines.evaluation.nodes import evaluate_reconstructions, reconstruct_test_set
from cvae_mnist.runtime import seed_everything
from cvae_mnist.training import Trainer, cvae_trainer

BATCH_SIZE = 128
# Zen 4 runs AVX-512 on two 256-bit FMA pipes: 2 x 8 lanes x 2 FLOP per cycle and core.
FP32_FLOP_PER_CYCLE = 32


def reference_epoch(model: CVAE, optimizer: torch.optim.Optimizer, loader: DataLoader) -> int:
    """The report's loop: DataLoader collation, fp32, eager, sigmoid + BCE, summed loss."""
    model.train()
    seen = 0
    for x, y in loader:
        logits, mu, logvar = model(x, y)
        bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(x)
    return seen


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def our_trainer(model: CVAE, training: TrainingParams, steps_per_epoch: int, stack: ExitStack) -> Trainer:
    """Our engine as `kedro run` sets it up, the fast path held open on ``stack``."""
    device = torch.device("cpu")
    if training.fast_path == "auto":
        stack.enter_context(accelerated(model, device))
    return cvae_trainer(model, training, device, steps_per_epoch)


def flop_per_image(model_config: ModelParams) -> float:
    """Forward + backward FLOPs of one fp32 training image, counted by torch."""
    model = CVAE(model_config)
    x, y = torch.rand(BATCH_SIZE, 1, 28, 28), torch.randint(0, 10, (BATCH_SIZE,))
    with FlopCounterMode(display=False) as counter:
        logits, mu, logvar = model(x, y)
        (F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + mu.sum() + logvar.sum()).backward()
    return counter.get_total_flops() / BATCH_SIZE


def cpu_ghz() -> float | None:
    try:
        mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
    except OSError:
        return None
    return max(mhz) / 1000 if mhz else None


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


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

    with project_catalog(args.env, required=("mnist_train", "mnist_test")) as (catalog, params):
        train = catalog.load("mnist_train")
        test = catalog.load("mnist_test")
        raw, raw_seconds = timed(catalog.load, "mnist_raw")
        trained = catalog.load("cvae_model") if catalog.exists("cvae_model") else None

    config: TrainingParams = params["training"]
    ours_model: ModelParams = params["model"]
    report_model = environment_parameters("report").model
    if args.images:
        train = {key: value[: args.images] for key, value in train.items()}
    n = len(train["labels"])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {n} training images, batch {BATCH_SIZE}, {args.rounds} rounds"
    )
    print(
        f"ours: {', '.join(f'{k}={getattr(config, k)}' for k in ('fast_path', 'mixed_precision', 'compile'))}"
    )

    generator = seed_everything(1)
    reference_model = CVAE(report_model)
    reference_optimizer = torch.optim.Adam(reference_model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(train["images"], train["labels"]), batch_size=BATCH_SIZE, shuffle=True)
    # a learning-rate schedule, if any, spans the warm-up and every round
    config = config.model_copy(update={"batch_size": BATCH_SIZE, "epochs": args.rounds + 1})
    steps = math.ceil(n / BATCH_SIZE)
    stack = ExitStack()
    variants = {"reference": None, "ours": our_trainer(CVAE(report_model), config, steps, stack)}
    architectures = {"reference": report_model, "ours": report_model}
    if ours_model != report_model:
        name = "ours, default architecture"
        variants[name] = our_trainer(CVAE(ours_model), config, steps, stack)
        architectures[name] = ours_model

    # untimed warm-up: oneDNN builds its kernels on first use, the DataLoader its iterator
    warmup = {key: value[: args.warmup] for key, value in train.items()}
    reference_epoch(
        reference_model, reference_optimizer, DataLoader(TensorDataset(*warmup.values()), BATCH_SIZE)
    )
    for trainer in variants.values():
        if trainer is not None:
            trainer.train_epoch(warmup, BATCH_SIZE, generator, "warm-up")

    speeds: dict[str, list[float]] = {name: [] for name in variants}
    # CPU time and minor page faults of each loop (whole process: both threads, the kernel's share apart)
    usage = {name: dict.fromkeys(("user", "system", "faults"), 0.0) for name in variants}
    for round_number in range(1, args.rounds + 1):
        for name, trainer in variants.items():
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            if trainer is None:
                reference_epoch(reference_model, reference_optimizer, loader)
            else:
                trainer.train_epoch(train, BATCH_SIZE, generator, f"round {round_number}")
            speeds[name].append(n / (time.perf_counter() - started))
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[name]["user"] += after.ru_utime - before.ru_utime
            usage[name]["system"] += after.ru_stime - before.ru_stime
            usage[name]["faults"] += after.ru_minflt - before.ru_minflt
        print(
            f"round {round_number}: "
            + ", ".join(f"{name} {values[-1]:.0f} img/s" for name, values in speeds.items()),
            flush=True,
        )
    stack.close()

    ratios = [o / r for o, r in zip(speeds["ours"], speeds["reference"])]
    flops = flop_per_image(report_model)
    print()
    for name, values in speeds.items():
        median, model_flops = statistics.median(values), flop_per_image(architectures[name])
        print(
            f"{name:>28}: {median:8.0f} img/s (median), {median * model_flops / 1e9:6.1f} GFLOP/s of fp32-equivalent "
            f"work ({model_flops / 1e9:.4f} GFLOP per image)"
        )
    print(
        f"{'training speed ratio':>28}: {statistics.median(ratios):.2f}x ours / reference (median of {[round(r, 2) for r in ratios]})"
    )
    batches = args.rounds * steps
    print(f"{'per batch':>28}: CPU time (both threads, user + system) and minor page faults")
    for name, used in usage.items():
        print(
            f"{name:>28}: user {used['user'] / batches * 1e3:6.1f} ms + system {used['system'] / batches * 1e3:5.1f} ms, "
            f"{used['faults'] / batches:6.0f} page faults"
        )
    ghz = cpu_ghz()
    if ghz:
        peak = torch.get_num_threads() * ghz * FP32_FLOP_PER_CYCLE
        print(
            f"{'fp32 peak (assumed)':>28}: {peak:.0f} GFLOP/s = {torch.get_num_threads()} cores x {ghz:.2f} GHz x "
            f"{FP32_FLOP_PER_CYCLE} FLOP/cycle; model {flops / 1e9:.4f} GFLOP per training image"
        )
    print(f"{'peak resident memory':>28}: {peak_rss_mib():.0f} MiB (whole process, after both loops)")

    (train_set, test_set), decode_seconds = timed(decode_mnist, raw, params["data_ingestion"])
    label = "trained model" if trained is not None else "untrained model (no cvae_model yet)"
    model = trained or CVAE(ours_model).eval()
    started = time.perf_counter()
    metrics = evaluate_reconstructions(reconstruct_test_set(model, test, params["evaluation"]), test)
    evaluate_seconds = time.perf_counter() - started
    print(
        f"{'ingestion':>28}: load + SHA-256 of the raw files {raw_seconds:.2f} s, decode_mnist node {decode_seconds:.2f} s "
        f"({len(train_set['labels'])} + {len(test_set['labels'])} images)"
    )
    print(
        f"{'evaluation':>28}: reconstruct_test_set and evaluate_reconstructions nodes {evaluate_seconds:.2f} s over {int(metrics['n_images'].item())} "
        f"test images ({label})"
    )


if __name__ == "__main__":
    main()
