"""Our training step against where the host puts our two CPUs.

Run from the project root after `kedro run --pipeline data_ingestion` (or any full run):

    .venv/bin/python benchmarks/placement.py --seconds 120

Alternates, for the given time, the CPU round trip of benchmarks/_placement.py with a few
training steps of ours (the report's CVAE, the `training` speed settings as `kedro run`
uses them): on two threads with batches of 128, on one thread with 128, and on one
thread with 64 (the share of one CPU if each CPU trained half of each batch). Each line
is one interval; the summary splits the intervals by round trip (both probes, before and
after the steps, below or above the middle of the range seen), so the step times of the
two placements can be compared.
"""

from __future__ import annotations

import statistics
import time

import torch
from _placement import cpu_round_trip_ns
from _project import positive_int, positive_seconds, project_catalog, script_parser

from cvae_mnist.config import TrainingConfig, parse_section
from cvae_mnist.model import CVAEConfig
from cvae_mnist.pipelines.training.nodes import Trainer

SPLIT_RATIO = 1.3  # round trips this far apart are two placements, not noise
SETUPS = {"2 threads x 128": (2, 128), "1 thread x 128": (1, 128), "1 thread x 64": (1, 64)}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--seconds", type=positive_seconds, default=120, help="how long to alternate (default 120)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=20, help="training steps per setup and interval (default 20)"
    )
    args = parser.parse_args()
    if cpu_round_trip_ns(trips=10) is None:
        raise SystemExit("Error: this needs two CPUs that can be pinned (Linux).")

    with project_catalog(args.env, required=("mnist_train",)) as (catalog, params):
        train = catalog.load("mnist_train")
    config = parse_section(TrainingConfig, "training", params["training"])
    trainer = Trainer.create(CVAEConfig(), config, torch.device("cpu"))
    images, labels = train["images"][:6400], train["labels"][:6400]
    threads = torch.get_num_threads()

    def step_ms(num_threads: int, batch: int) -> float:
        torch.set_num_threads(num_threads)
        started = time.perf_counter()
        for i in range(args.steps):
            start = (i * batch) % (len(labels) - batch)
            x, y = images[start : start + batch], labels[start : start + batch]
            [term.item() for term in trainer._step(x, y, config.beta)]
        torch.set_num_threads(threads)
        return (time.perf_counter() - started) / args.steps * 1e3

    for num_threads, batch in SETUPS.values():  # untimed warm-up: oneDNN builds its kernels
        step_ms(num_threads, batch)
    intervals = []
    ends = time.monotonic() + args.seconds
    while time.monotonic() < ends:
        before = cpu_round_trip_ns()
        times = {name: step_ms(*setup) for name, setup in SETUPS.items()}
        after = cpu_round_trip_ns()
        intervals.append((before, after, times))
        print(
            f"{time.strftime('%H:%M:%S')} round trip {before:4.0f} ns before, {after:4.0f} ns after; "
            + ", ".join(f"{name} {ms:5.2f} ms/step" for name, ms in times.items()),
            flush=True,
        )

    trips = [trip for before, after, _ in intervals for trip in (before, after)]
    if max(trips) < SPLIT_RATIO * min(trips):
        print(f"\none placement only in this run (round trips {min(trips):.0f}-{max(trips):.0f} ns): median")
        for name in SETUPS:
            print(f"{name:>16}: {statistics.median(t[name] for *_, t in intervals):5.2f} ms/step")
        return
    middle = (min(trips) + max(trips)) / 2
    groups = {
        "round trip low": [t for b, a, t in intervals if b < middle and a < middle],
        "round trip high": [t for b, a, t in intervals if b >= middle and a >= middle],
    }
    print(f"\nmiddle of the round trips seen: {middle:.0f} ns (intervals where it changed are left out)")
    for label, group in groups.items():
        if group:
            print(
                f"{label:>16}: {len(group):3d} intervals; median "
                + ", ".join(
                    f"{name} {statistics.median(t[name] for t in group):5.2f} ms/step" for name in SETUPS
                )
            )


if __name__ == "__main__":
    main()
