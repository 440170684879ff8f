"""What runs only on other machines, checked here: Windows' missing POSIX modules, torchrun
on hosts with fewer GPUs than processes, and Apple's MPS under torchrun."""

import errno
import os
import subprocess
import sys

import pytest
import torch

from cvae_mnist.core.runtime import World, deterministic_algorithms, select_device
from cvae_mnist.engine import distributed
from cvae_mnist.errors import DistributedError
from cvae_mnist.glue.saving import write_error
from mnist_fixtures import CHILD_ENV, HANG, REPO, make_test_project

POSIX_ONLY = ("fcntl", "termios", "pwd", "grp", "resource")

CHILD = f"""
import sys
for name in {POSIX_ONLY!r}:
    sys.modules[name] = None  # as on Windows: importing it raises ImportError
sys.path.insert(0, {str(REPO / "tests")!r})
from pathlib import Path
from mnist_fixtures import run_session
run_session(Path(sys.argv[1]))
print("ran without POSIX-only modules")
"""


def test_a_run_needs_no_posix_only_module(tmp_path):
    project = make_test_project(tmp_path, training={"epochs": 1})
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(project)],
        env=CHILD_ENV, capture_output=True, text=True, timeout=HANG, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ran without POSIX-only modules" in done.stdout
    assert (project / "data" / "08_reporting" / "metrics.csv").exists()


def test_no_module_of_the_package_imports_a_posix_only_module():
    imported = [
        (path.relative_to(REPO), line.strip())
        for path in (REPO / "src").rglob("*.py")
        for line in path.read_text().splitlines()
        if line.strip().startswith(tuple(f"{kw} {m}" for m in POSIX_ONLY for kw in ("import", "from")))
    ]
    assert imported == []


def test_a_rank_beyond_the_machines_gpus_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert World(1, 2, 0).device(torch.device("cuda")) == torch.device("cuda", 0)
    with pytest.raises(DistributedError, match=r"started process 1 on this machine, which has 1 GPU: NCCL"):
        World(1, 2, 1).device(torch.device("cuda"))
    assert World(1, 2, 1).device(torch.device("cpu")) == torch.device("cpu")  # the CPU: any number


def test_start_sets_only_a_gpu_that_exists(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed.dist, "new_group", lambda *args, **kwargs: "group")
    try:
        distributed.start(World(1, 2, 1))  # the second process on a machine of one GPU
        assert chosen == []
        distributed.start(World(0, 2, 0))
        assert chosen == [0]
    finally:
        distributed._Job.world, distributed._Job.training_group = World(), None


def test_torchrun_on_mps_is_refused_with_one_line():
    with pytest.raises(DistributedError, match="torchrun cannot train on Apple's MPS"):
        World(0, 2, 0).device(torch.device("mps"))
    assert World().device(torch.device("mps")) == torch.device("mps")  # one process: MPS as asked


@pytest.mark.parametrize("on", [True, False])
def test_deterministic_mode_sets_cuda_and_cudnn_and_leaves_the_cpu_alone(monkeypatch, on):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", calls.append)
    cudnn = torch.backends.cudnn
    for flag, start in (("deterministic", not on), ("benchmark", on), ("allow_tf32", on)):
        monkeypatch.setattr(cudnn, flag, start)  # the opposite of what `on` asks; restored after
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic_algorithms(torch.device("cpu"), on)
    assert calls == [] and (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32) == (not on, on, on)
    deterministic_algorithms(torch.device("cuda"), on)
    assert calls == [on]
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (on, not on)
    assert torch.backends.cudnn.allow_tf32 is (not on)
    assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8") is on


def test_a_failed_write_is_one_line_where_errno_has_no_edquot(monkeypatch, tmp_path):
    monkeypatch.delattr(errno, "EDQUOT", raising=False)  # as on Windows
    message = str(write_error(tmp_path / "cvae.pt", PermissionError(errno.EACCES, "Access is denied")))
    assert message.startswith(f"Cannot write {tmp_path / 'cvae.pt'}: permission denied.")


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (True, False, "cuda"), (False, False, "cpu")],
)
def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"  # asked by name, it is what it is
    for name, there in (("cuda", cuda), ("mps", mps)):
        if there:
            assert select_device(name).type == name
        else:
            with pytest.raises(RuntimeError, match=f"device '{name}' was requested but"):
                select_device(name)
