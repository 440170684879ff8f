"""The device check runs here on the CPU, so that it cannot rot before it runs on a GPU."""

import subprocess
import sys

from mnist_fixtures import CHILD_ENV, HANG, REPO

CHECK = REPO / "benchmarks" / "device_check.py"


def test_the_device_check_passes_on_the_cpu_and_writes_its_table(tmp_path):
    out = tmp_path / "device_check.md"
    done = subprocess.run(
        [sys.executable, str(CHECK), "--device", "cpu", "--quick", "--synthetic", "--out", str(out)],
        cwd=tmp_path, env=CHILD_ENV, capture_output=True, text=True, timeout=HANG, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "All checks passed" in done.stdout
    table = out.read_text()
    for row in (
        "train, fp32",
        "resume after epoch 1 (deterministic)",
        "generation = CPU (same seed)",
        "prior fit",
        "likelihood = CPU (K = 10)",
        "classifier and label swaps",
        "throughput, batch 128",
    ):
        assert f"| {row} |" in table, row
    assert "synthetic digits" in table and "**no**" not in table


def test_a_failed_check_is_a_row_and_exit_code_1(tmp_path):
    # a device the check cannot use: every training row fails, the check still ends with its table
    code = (
        "import sys, runpy; sys.argv = ['device_check.py', '--device', 'cpu', '--quick', '--synthetic', "
        f"'--out', {str(tmp_path / 't.md')!r}]\n"
        f"sys.path.insert(0, {str(REPO / 'src')!r})\n"
        "import cvae_mnist.engine.recipe\n"
        "def broken(*a, **k): raise RuntimeError('no kernel for this device')\n"
        "cvae_mnist.engine.recipe.fit_cvae = broken\n"
        f"runpy.run_path({str(CHECK)!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=CHILD_ENV, capture_output=True, text=True, timeout=HANG,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert "FAIL train, fp32: RuntimeError: no kernel for this device" in done.stdout
    assert "| train, fp32 | RuntimeError: no kernel for this device" in (tmp_path / "t.md").read_text()
