"""The lineage records: what made a file, and when an input has gone stale."""

import json
import os

from cvae_mnist.glue import lineage
from cvae_mnist.params import TrainingParams


def _made(tmp_path, name: str, content: bytes, record: dict):
    path = tmp_path / name
    path.write_bytes(content)
    lineage.write_record(path, record)
    return path


def test_a_record_names_the_files_signature_and_reads_back_only_for_that_file(tmp_path):
    path = _made(tmp_path, "model.pt", b"weights", {"parameters": {"training.epochs": 8}})
    record = lineage.read_record(path)
    assert record["parameters"] == {"training.epochs": 8}
    assert record["file"]["size"] == 7 and len(record["file"]["sha256"]) == 64
    path.write_bytes(b"other weights")  # another file in its place: the record is not its own
    assert lineage.read_record(path) is None
    assert lineage.read_record(tmp_path / "missing.pt") is None


def test_a_changed_setting_is_named_with_both_values_and_runtime_settings_do_not_count():
    record = {"parameters": lineage.parameters_of("training", TrainingParams(epochs=8))}
    assert "training.device" not in record["parameters"]  # where it ran does not change what it is
    now = lineage.parameters_of("training", TrainingParams(epochs=2, device="cpu"))
    assert lineage.changed_setting("cvae.pt", record, now) == (
        "cvae.pt was made with training.epochs = 8, and the parameters now give 2"
    )
    assert (
        lineage.changed_setting(
            "cvae.pt", record, lineage.parameters_of("training", TrainingParams(epochs=8))
        )
        is None
    )


def test_a_file_made_from_an_input_written_again_since_is_stale(tmp_path):
    source = tmp_path / "mnist_train.pt"
    source.write_bytes(b"images")
    made = _made(
        tmp_path,
        "cvae.pt",
        b"weights",
        {"inputs": {"mnist_train.pt": lineage.signature(source)}},
    )
    record = lineage.read_record(made)
    assert lineage.changed_source("cvae.pt", record, tmp_path) is None
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert lineage.changed_source("cvae.pt", record, tmp_path) is None
    source.write_bytes(b"IMAGES")  # the same size, other bytes
    assert lineage.changed_source("cvae.pt", record, tmp_path) == (
        "cvae.pt was made from mnist_train.pt as it was before mnist_train.pt was written again"
    )


def test_the_signature_reuses_a_known_hash_only_while_size_and_time_are_unchanged(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    known = {**lineage.signature(path), "sha256": "recorded"}
    assert lineage.signature(path, known)["sha256"] == "recorded"  # not read again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert lineage.signature(path, known)["sha256"] != "recorded"


def test_records_hold_paths_relative_to_the_project(tmp_path):
    assert lineage.relative(tmp_path / "data" / "x.pt", tmp_path) == os.path.join("data", "x.pt")
    assert lineage.relative("/elsewhere/x.pt", tmp_path) == "/elsewhere/x.pt"
    assert json.loads(json.dumps(lineage.parameters_of("seed", 3))) == {"seed": 3}
