"""The device check: the project's GPU (or MPS) path end to end, in minutes, with no network.

    python benchmarks/device_check.py --device cuda            # make device-check
    python benchmarks/device_check.py --device cpu             # a subset, 1 epoch: about 1.5 minutes
    python benchmarks/device_check.py --device cpu --quick     # the test suite runs this

It runs from the source tree on the project's core alone (model, engine, inference, prior,
metrics), so that it also runs where Kedro and MLflow are not installed: it needs torch,
numpy, scikit-learn, threadpoolctl, tqdm, pydantic and zuko (docs/device-check.md says how
to bring the last two as wheels). Data: the real MNIST files from data/01_raw/mnist or
../shared/mnist when present (raw or gzipped), else synthetic digits. Each check prints a
row; the table is also written to --out, and the exit code is 1 if any check failed.
A full `kedro run` on the device is the last check, where Kedro is installed.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from the source tree

from cvae_mnist.core.classifier import predict  # noqa: E402
from cvae_mnist.core.idx import parse_idx  # noqa: E402
from cvae_mnist.core.inference import decode, encode, generate, likelihood_terms, reconstruct  # noqa: E402
from cvae_mnist.core.prior_fitting import fit_prior  # noqa: E402
from cvae_mnist.core.runtime import mixed_precision_dtype, select_device  # noqa: E402
from cvae_mnist.engine.recipe import fit_cvae, train_classifier  # noqa: E402
from cvae_mnist.params import ClassifierParams, ModelParams, PriorParams, TrainingParams  # noqa: E402

FOLDERS = ("data/01_raw/mnist", "../shared/mnist")
TOLERANCE = 5e-3  # largest pixel difference allowed between the device's and the CPU's images
NATS = 0.05  # largest iw_nll difference allowed between the device and the CPU
GPUS_FOR_TORCHRUN = 2
LEARNED = 0.5  # a digit classifier that reads at least half the test digits has learned


class MemoryCheckpoint:
    """A checkpoint store in memory (the engine's CheckpointStore protocol)."""

    filepath = "memory"

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def exists(self) -> bool:
        return self.state is not None

    def read(self) -> dict[str, Any]:
        return self.state

    def write(self, state: dict[str, Any]) -> None:
        self.state = state


def load_data(subset: bool, synthetic: bool = False) -> tuple[dict, dict, str]:
    """Real MNIST when a folder has it (6,000 + 1,000 images with ``subset``), else synthetic digits."""
    names = {"train": "train", "test": "t10k"}
    for folder in map(Path, () if synthetic else FOLDERS):
        found = {n: folder / n for n in os.listdir(folder)} if folder.is_dir() else {}
        files = {}
        for split, prefix in names.items():
            for kind, ndim in (("images", 3), ("labels", 1)):
                name = f"{prefix}-{kind}-idx{ndim}-ubyte"
                path = found.get(name) or found.get(f"{name}.gz")
                if path is not None:
                    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
                    files[(split, kind)] = parse_idx(raw, name, ndim)
        if len(files) == len(names) * 2:  # images and labels of both splits
            limit = {"train": 6000, "test": 1000} if subset else {"train": None, "test": None}
            return *(
                _split(files[(s, "images")], files[(s, "labels")], limit[s]) for s in names
            ), f"MNIST from {folder}"
    rng = np.random.default_rng(0)
    splits = []
    for n in (600, 200) if subset else (6000, 1000):
        labels = np.arange(n) % 10
        images = rng.integers(0, 30, size=(n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            image[2 + 2 * label : 5 + 2 * label, 4:24] = 255
        splits.append(_split(images, labels, None))
    return *splits, "synthetic digits (no MNIST files found)"


def _split(images: np.ndarray, labels: np.ndarray, limit: int | None) -> dict[str, torch.Tensor]:
    return {
        "images": torch.from_numpy(images[:limit].astype(np.float32) / 255).unsqueeze(1),
        "labels": torch.from_numpy(labels[:limit].astype(np.int64)),
    }


def images_per_second(model: ModelParams, train: dict, device: torch.device, batch_size: int) -> float:
    """Training throughput: images per second over timed epochs after a warm-up epoch."""
    n = min(len(train["labels"]), batch_size * 40)
    subset = {k: v[:n] for k, v in train.items()}
    params = TrainingParams(
        device=device.type, epochs=2, batch_size=batch_size, lr_schedule="constant", lr=1e-3
    )
    _, history = fit_cvae(model, subset, {k: v[:batch_size] for k, v in subset.items()}, params, seed=0)
    return n / history["seconds"][-1]


def run_checks(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    device = select_device(args.device)
    on_cpu = device.type == "cpu"  # the CPU checks the script itself: a subset, so it ends in minutes
    train, test, source = load_data(args.quick or on_cpu, args.synthetic)
    model = ModelParams(latent_dim=8, base_channels=8) if args.quick else ModelParams()
    rows: list[tuple[str, str, bool]] = []

    def check(name: str, run: Callable[[], tuple[str, bool]]) -> Any:
        started = time.perf_counter()
        try:
            value, ok = run()
        except Exception as error:  # noqa: BLE001 - a failed check is a row, the others still run
            value, ok = (
                f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}",
                False,
            )
        rows.append((name, f"{value} ({time.perf_counter() - started:.1f} s)", ok))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {rows[-1][1]}", flush=True)

    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type
    )
    rows.append(
        ("device", f"{device} ({name}), torch {torch.__version__}, Python {platform.python_version()}", True)
    )
    rows.append(
        ("data", f"{source}: {len(train['labels'])} training, {len(test['labels'])} test images", True)
    )
    dtype = mixed_precision_dtype(device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    rows.append(("precision", f"autocast {dtype} (compute capability {capability})", True))
    epochs = 1 if args.quick else args.epochs or (1 if on_cpu else 3)
    trained: dict[str, Any] = {}

    def train_with(**settings: Any) -> tuple[str, bool]:
        params = TrainingParams(device=device.type, epochs=epochs, swap_weight=1.0, **settings)
        cvae, history = fit_cvae(model, train, test, params, seed=1)
        trained.setdefault("model", cvae)
        loss, seconds = history["test_loss"][-1], sum(history["seconds"])
        rate = epochs * len(train["labels"]) / seconds
        return f"test loss {loss:.2f} after {epochs} epochs, {rate:,.0f} images/s", bool(np.isfinite(loss))

    check("train, fp32", lambda: train_with(mixed_precision=False))
    if dtype is not None:
        check(
            f"train, {str(dtype).removeprefix('torch.')} autocast", lambda: train_with(mixed_precision=True)
        )
    if args.compile or (args.compile is None and not on_cpu and not args.quick):
        check("train, torch.compile", lambda: train_with(compile=True))
    else:  # compiling takes over a minute on a 2-core CPU, where training.compile is off by default
        rows.append(("train, torch.compile", "skipped on the CPU and with --quick (--compile runs it)", True))

    def resume() -> tuple[str, bool]:
        params = TrainingParams(device=device.type, epochs=2, deterministic=True, swap_weight=1.0)
        small = {k: v[:2048] for k, v in train.items()}
        straight, _ = fit_cvae(model, small, test, params, seed=3)
        stopped = MemoryCheckpoint()
        _train_stopped(model, small, test, params, stopped)  # as if killed after epoch 1
        resumed, _ = fit_cvae(
            model, small, test, params.model_copy(update={"resume": True}), seed=3, checkpoint=stopped
        )
        pairs = zip(straight.state_dict().values(), resumed.state_dict().values())
        worst = max((a.float() - b.float()).abs().max().item() for a, b in pairs)
        return f"largest weight difference to an uninterrupted run {worst:.2e}", worst == 0

    check("resume after epoch 1 (deterministic)", resume)

    def cvae() -> Any:  # the model the first training check trained (a KeyError fails the row)
        return trained["model"]

    def agree(what: str, run: Callable[[torch.device], torch.Tensor]) -> tuple[str, bool]:
        here, there = run(device), run(torch.device("cpu"))
        worst = (here - there).abs().max().item()
        return f"largest difference to the CPU {worst:.1e} (tolerance {TOLERANCE})", worst <= TOLERANCE

    labels = torch.arange(10).repeat_interleave(100)
    check(
        "reconstruction = CPU",
        lambda: agree(
            "reconstruct",
            lambda d: torch.sigmoid(
                reconstruct(cvae(), test["images"][:1000], test["labels"][:1000], 500, d)
            ),
        ),
    )
    check("generation = CPU (same seed)", lambda: agree("generate", lambda d: generate(cvae(), labels, 7, d)))

    def prior() -> tuple[str, bool]:
        mu, logvar = encode(cvae(), train["images"], train["labels"], 1000, device)
        params = PriorParams(
            kind="flow", epochs=2 if args.quick else 10, pseudo_inputs=50 if args.quick else 500
        )
        fitted = copy.deepcopy(cvae()).with_prior(params)
        curve = fit_prior(fitted.prior, mu, logvar, train["labels"], params, seed=1)
        drawn = generate(fitted, labels, 7, device)  # from the flow and the pseudo-inputs, on the device
        ok = bool(np.isfinite(curve[-1])) and bool(drawn.isfinite().all())
        return f"flow fitted, {curve[-1]:.2f} nats per code; {len(drawn)} digits drawn", ok

    check("prior fit", prior)

    def likelihood() -> tuple[str, bool]:
        terms = [
            likelihood_terms(cvae(), test["images"][:500], test["labels"][:500], 10, 1000, d, seed=0)[
                "iw_nll"
            ]
            .mean()
            .item()
            for d in (device, torch.device("cpu"))
        ]
        gap = abs(terms[0] - terms[1])
        return f"iw_nll {terms[0]:.3f} here, {terms[1]:.3f} on the CPU", gap < NATS

    check("likelihood = CPU (K = 10)", likelihood)

    def label_swap() -> tuple[str, bool]:
        judge = train_classifier(train, ClassifierParams(epochs=3), device)
        accuracy = (predict(judge, test["images"], device=device)[0] == test["labels"]).float().mean().item()
        mu, _ = encode(cvae(), test["images"], test["labels"], 1000, device)
        target = (test["labels"] + 1) % 10
        swapped = torch.sigmoid(decode(cvae(), mu, target, 1000, device))
        read = (predict(judge, swapped, device=device)[0] == target).float().mean().item()
        return (
            f"classifier {accuracy:.3f} on test digits; swapped decodes read as the new label {read:.3f}",
            accuracy >= LEARNED,
        )

    check("classifier and label swaps", label_swap)
    for batch_size in (128, 1024):
        check(
            f"throughput, batch {batch_size}",
            lambda b=batch_size: (
                f"{images_per_second(model, train, device, b):,.0f} training images/s",
                True,
            ),
        )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(("peak GPU memory", f"{peak:,.0f} MiB", True))
    check("kedro run", lambda: kedro_run(device, args.quick, env="smoke" if on_cpu else "base"))
    check("torchrun, 2 processes", lambda: torchrun(device))
    return rows


def _train_stopped(
    model: ModelParams, train: dict, test: dict, params: TrainingParams, store: MemoryCheckpoint
) -> None:
    """Train as ``params`` asks, but stop after the first epoch's checkpoint."""

    class Stop(Exception):
        pass

    def write_then_stop(state: dict[str, Any]) -> None:
        store.state = state
        raise Stop

    store.write = write_then_stop
    try:
        fit_cvae(model, train, test, params, seed=3, checkpoint=store)
    except Stop:
        pass
    del store.write  # the class's write again


def kedro_run(device: torch.device, quick: bool, env: str) -> tuple[str, bool]:
    """The whole pipeline on the device: the default configuration, or the smoke one on the CPU."""
    if importlib.util.find_spec("kedro") is None or quick:
        return "skipped: " + ("--quick" if quick else "Kedro is not installed here"), True
    where = f"training.device={device.type},evaluation.device={device.type}"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--env", env, "--params", where],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode:
        return f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:200]}", False
    name = "the default run" if env == "base" else f"`kedro run --env {env}`"
    return f"{name} in {time.perf_counter() - started:.0f} s", True


def torchrun(device: torch.device) -> tuple[str, bool]:
    if device.type != "cuda" or torch.cuda.device_count() < GPUS_FOR_TORCHRUN:
        return "skipped: needs 2 GPUs (NCCL takes one per process); CI runs torchrun on the CPU", True
    if importlib.util.find_spec("kedro") is None:
        return "skipped: Kedro is not installed here", True
    command = [
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cvae_mnist",
        "run",
        "--pipeline",
        "training",
        "--params",
        "training.epochs=1,training.device=cuda",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return (f"exit {done.returncode}", done.returncode == 0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of each training check (default 3; 1 on the CPU)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check torch.compile (default: on a GPU or MPS, not on the CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="a small model on a subset, 1 epoch (the tests)")
    parser.add_argument(
        "--synthetic", action="store_true", help="synthetic digits even where MNIST is present"
    )
    parser.add_argument("--out", default="device_check.md", help="where the table is written")
    args = parser.parse_args()
    rows = run_checks(args)
    failed = [name for name, _, ok in rows if not ok]
    table = ["| check | result | ok |", "|---|---|---|"] + [
        f"| {n} | {v} | {'yes' if ok else '**no**'} |" for n, v, ok in rows
    ]
    text = f"Device check, {time.strftime('%Y-%m-%d')}\n\n" + "\n".join(table) + "\n"
    Path(args.out).write_text(text)
    print(
        f"\n{text}\n{'All checks passed' if not failed else 'Failed: ' + ', '.join(failed)}; table in {args.out}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
