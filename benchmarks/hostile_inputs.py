"""Hostile but fair inputs, each tried on a real `kedro run` of a tiny copy of the project.

    .venv/bin/python benchmarks/hostile_inputs.py            # about 10 minutes on 2 cores

A temporary project (the project's configuration, tiny synthetic IDX files, an environment
`test`, as the test suite builds it) is trained once; then every input below is tried in a
process of its own and the table says what each got: the exit code, the last line the user
saw, whether a traceback was printed, and which files under data/ changed. Prints a
Markdown table (docs/reliability.md holds one).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cvae_mnist.core.model import CVAE  # noqa: E402
from cvae_mnist.datasets import CVAEDataset  # noqa: E402
from cvae_mnist.glue.hooks import lock_paths  # noqa: E402
from cvae_mnist.params import ModelParams  # noqa: E402
from mnist_fixtures import make_test_project  # noqa: E402

KEDRO = str(Path(sys.executable).parent / "kedro")
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}


def snapshot(project: Path) -> dict[str, str]:
    return {
        str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (project / "data").rglob("*")
        if p.is_file() and not p.name.endswith((".lock", ".lineage.json"))
    }


def kedro(project: Path, *args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KEDRO, "run", *args],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard
        check=False,
        **popen,
    )


def edit(path: Path, text: str) -> Callable[[], None]:
    """Write ``text`` to ``path``; return what puts it back."""
    old = path.read_bytes() if path.exists() else None
    path.write_text(text)
    return lambda: path.write_bytes(old) if old is not None else path.unlink()


class Tour:
    def __init__(self, project: Path) -> None:
        self.project, self.rows = project, []

    def attempt(
        self,
        label: str,
        args: list[str],
        prepare: Callable[[], Callable[[], None] | None] | None = None,
        **popen,
    ) -> None:
        undo = prepare() if prepare else None
        before = snapshot(self.project)
        try:
            result = kedro(self.project, *args, **popen)
            after = snapshot(self.project)  # before the input is put back
        finally:
            if undo:
                undo()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        self.record(
            label, "kedro run " + " ".join(args), result.returncode, result.stdout + result.stderr, changed
        )

    def record(self, label: str, command: str, code: int, output: str, changed: list[str]) -> None:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
        # the error message with its continuation lines (a list of sources tried, say)
        last = " ".join(lines[errors[-1] :]) if errors else (lines[-1] if lines else "")
        shown = (
            "none" if not changed else f"{len(changed)} ({', '.join(Path(c).name for c in changed[:3])}...)"
        )
        self.rows.append((label, command, code, "Traceback" in output, last.strip(), shown))
        print(f"{len(self.rows):3d}. {label}: exit {code}, {last.strip()[:140]}", flush=True)


def parameter_cases() -> list[tuple[str, str]]:
    return [
        ("epochs 0", "training.epochs=0"),
        ("epochs not whole", "training.epochs=2.5"),
        ("epochs a word", "training.epochs=abc"),
        ("negative learning rate", "training.lr=-1"),
        ("infinite learning rate", "training.lr=.inf"),
        ("unknown loss", "training.loss=l1"),
        ("resume not a boolean", "training.resume=1"),
        ("unknown device", "training.device=tpu"),
        ("batch size 0", "training.batch_size=0"),
        ("batch size a million", "training.batch_size=1000000"),
        ("misspelt key", "training.epochz=3"),
        ("misspelt section", "trainng.epochs=1"),
        ("negative seed", "seed=-1"),
        ("seed a word", "seed=one"),
        ("latent_dim a million", "model.latent_dim=1000000"),
        ("image size 32", "model.image_size=32"),
        ("5 classes", "model.num_classes=5"),
        ("unknown architecture", "model.architecture=resnet"),
        ("0 prior components", "prior.components=0"),
        ("CUDA on a machine without", "evaluation.device=cuda"),
        ("0 importance samples", "evaluation.iw_samples=0"),
        ("10**8 generated digits", "generation.n_samples=10**8"),
        ("digit 10", "generation.digit=10"),
        ("n_train 0", "data_ingestion.n_train=0"),
        ("seed 2**40 (NumPy seeds below 2**32)", "seed=1099511627776"),
        ("an unbalanced quote", "seed='1"),
    ]


def run_tour(project: Path) -> Tour:
    tour = Tour(project)
    env = ["--env", "test"]
    for label, params in parameter_cases():
        tour.attempt(f"parameter: {label}", [*env, "--params", params])
    tour.attempt("a pipeline that does not exist", [*env, "--pipeline", "nosuch"])
    tour.attempt("an environment that does not exist", ["--env", "nosuch"])
    conf = project / "conf" / "test"
    for label, file, text in [
        ("invalid YAML", "parameters_x.yml", "training:\n  epochs: [1\n"),
        ("a catalog entry without type", "catalog_x.yml", "metrics:\n  filepath: m.csv\n"),
        (
            "a catalog entry of an unknown type",
            "catalog_x.yml",
            "metrics:\n  type: pandas.NoSuch\n  filepath: m.csv\n",
        ),
        ("a parameter section that is a number", "parameters_x.yml", "training: 5\n"),
        ("a parameter section that is empty", "parameters_x.yml", "training:\n"),
        ("a parameters file that is a list", "parameters_x.yml", "- 1\n- 2\n"),
        ("a misspelt key in mlflow.yml", "mlflow_x.yml", "tracking:\n  experimnt:\n    name: x\n"),
    ]:
        tour.attempt(f"configuration: {label}", env, lambda file=file, text=text: edit(conf / file, text))
    raw = project / "data" / "01_raw" / "mnist"
    labels = raw / "t10k-labels-idx1-ubyte"
    tour.attempt(
        "a raw file cut short",
        [*env, "--pipeline", "data_ingestion"],
        lambda: edit_bytes(labels, labels.read_bytes()[:-5]),
    )
    tour.attempt(
        "a raw file that is not MNIST",
        [*env, "--pipeline", "data_ingestion"],
        lambda: edit_bytes(labels, os.urandom(50)),
    )
    tour.attempt("no raw files and no source", [*env, "--pipeline", "data_ingestion"], lambda: hide(raw))
    tour.attempt(
        "credentials in the mirror URL",
        [*env, "--pipeline", "data_ingestion"],
        lambda: combine(
            hide(raw), edit(conf / "globals.yml", 'mnist_mirror: "http://alice:s3cret@127.0.0.1:9/m"\n')
        ),
    )
    store = project / "mlflow.db"
    tour.attempt(
        "an MLflow store that is not a database",
        [*env, "--pipeline", "data_ingestion"],
        lambda: edit(
            conf / "mlflow.yml", f"server:\n  mlflow_tracking_uri: sqlite:///{junk_store(project)}\n"
        ),
    )
    tour.attempt(
        "a read-only MLflow store", [*env, "--pipeline", "data_ingestion"], lambda: unwritable(store)
    )
    model = project / "data" / "06_models" / "cvae.pt"
    tour.attempt(
        "a model made elsewhere, without its lineage record",
        [*env, "--pipeline", "evaluation"],
        lambda: foreign_model(model),
    )
    tour.attempt(
        "a model file cut short",
        [*env, "--pipeline", "evaluation"],
        lambda: edit_bytes(model, model.read_bytes()[:500]),
    )
    tour.attempt(
        "a model file that runs code when unpickled",
        [*env, "--pipeline", "evaluation"],
        lambda: edit_bytes(model, pickled_payload()),
    )
    tour.attempt(
        "resume with another batch size",
        [*env, "--pipeline", "training", "--params", "training.resume=true,training.batch_size=16"],
    )
    tour.attempt("diverging learning rate", [*env, "--pipeline", "training", "--params", "training.lr=1e30"])
    kedro(project, "--env", "test", "--pipeline", "training")  # a good model again
    tour.attempt(
        "a test set made with other settings",
        [*env, "--pipeline", "evaluation"],
        lambda: (
            kedro(
                project,
                "--env",
                "test",
                "--pipeline",
                "data_ingestion",
                "--params",
                "data_ingestion.n_test=20",
            ),
            None,
        )[1],
    )
    kedro(project, "--env", "test", "--pipeline", "data_ingestion")
    tour.attempt(
        "a model trained with other settings",
        [*env, "--pipeline", "evaluation"],
        lambda: (
            kedro(project, "--env", "test", "--pipeline", "training", "--params", "training.epochs=1"),
            None,
        )[1],
    )
    kedro(project, "--env", "test", "--pipeline", "training")
    tour.attempt(
        "a folder the run cannot write",
        [*env, "--pipeline", "evaluation"],
        lambda: unwritable(project / "data" / "08_reporting"),
    )
    tour.attempt(
        "a full disk (file size limit)",
        [*env, "--pipeline", "data_ingestion"],
        preexec_fn=lambda: small_disk(project),
    )
    second_run(tour, project)
    for number in (signal.SIGINT, signal.SIGTERM):
        interrupted(tour, project, number)
    return tour


def junk_store(project: Path) -> Path:
    junk = project / "junk.db"
    junk.write_bytes(os.urandom(5000))
    return junk


def foreign_model(model: Path) -> Callable[[], None]:
    """Another architecture's model copied over ours, with no lineage record beside it."""
    record = model.with_name(model.name + ".lineage.json")
    kept_model, kept_record = model.read_bytes(), record.read_bytes()
    CVAEDataset(filepath=str(model)).save(CVAE(ModelParams(architecture="report", latent_dim=8)))
    record.unlink()
    return lambda: (model.write_bytes(kept_model), record.write_bytes(kept_record))


def edit_bytes(path: Path, data: bytes) -> Callable[[], None]:
    old = path.read_bytes()
    path.write_bytes(data)
    return lambda: path.write_bytes(old)


def hide(folder: Path) -> Callable[[], None]:
    hidden = folder.with_name(folder.name + ".hidden")
    folder.rename(hidden)
    return lambda: (shutil.rmtree(folder, ignore_errors=True), hidden.rename(folder))


def combine(*undos: Callable[[], None]) -> Callable[[], None]:
    return lambda: [undo() for undo in reversed(undos)]


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cvae-mnist-owned",))


def pickled_payload() -> bytes:
    path = Path(tempfile.mkdtemp()) / "evil.pt"
    torch.save({"config": {}, "state_dict": _Payload()}, path)
    return path.read_bytes()


def unwritable(folder: Path) -> Callable[[], None]:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o555)
    return lambda: folder.chmod(0o755)


def small_disk(project: Path) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = (project / "mlflow.db").stat().st_size + 2**16
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def second_run(tour: Tour, project: Path) -> None:
    first = subprocess.Popen([KEDRO, "run", "--env", "test", "--params", "training.epochs=60"], cwd=project, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _, holder = lock_paths(project / "data" / "06_models")
    while not (holder.exists() and f"pid {first.pid}," in holder.read_text()) and first.poll() is None:
        time.sleep(0.05)
    result = kedro(project, "--env", "test", "--params", "seed=2")
    ingestion = kedro(project, "--env", "test", "--pipeline", "data_ingestion")
    first.wait()
    tour.record("a second run while the first writes", "kedro run --env test --params seed=2", result.returncode,
                result.stdout + result.stderr, [])  # fmt: skip
    tour.record("new inputs while a run reads them", "kedro run --env test --pipeline data_ingestion",
                ingestion.returncode, ingestion.stdout + ingestion.stderr, [])  # fmt: skip


def interrupted(tour: Tour, project: Path, number: int) -> None:
    checkpoint = project / "data" / "06_models" / "checkpoint.pt"
    checkpoint.unlink(missing_ok=True)
    process = subprocess.Popen([KEDRO, "run", "--env", "test", "--params", "training.epochs=400"], cwd=project, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    while not checkpoint.exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(number)
    output, _ = process.communicate()
    name = signal.Signals(number).name
    tour.record(
        f"{name} during training", f"kedro run --env test (then {name})", process.returncode, output, []
    )


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    Path("/tmp/cvae-mnist-owned").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        project = make_test_project(Path(folder), n_train=600)
        assert kedro(project, "--env", "test").returncode == 0
        tour = run_tour(project)
    print("\n| # | input | command | exit | traceback | what the user saw | files changed |")
    print("|---|---|---|---|---|---|---|")
    for number, (label, command, code, traced, last, changed) in enumerate(tour.rows, start=1):
        print(
            f"| {number} | {label} | `{command}` | {code} | {'yes' if traced else 'no'} | {last.replace('|', '/')} | {changed} |"
        )
    print(f"\n{len(tour.rows)} inputs; unpickled payload ran: {Path('/tmp/cvae-mnist-owned').exists()}")


if __name__ == "__main__":
    main()
