import os

import pytest
import torch

from mnist_fixtures import tiny_mnist_files

# No usage data leaves a test run (kedro-telemetry would try, and log a connection error).
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Tests run tiny tensors: extra threads only add overhead on a 2-core machine. Session
    # scope, so that module-scoped projects compute with the same threads as the tests
    # that re-run them (float sums depend on how work is split between threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_raw() -> dict[str, bytes]:
    return tiny_mnist_files()
