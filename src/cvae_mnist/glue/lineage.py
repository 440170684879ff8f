"""What made each file a run writes (``<file>.lineage.json``), and whether an input is still
what the parameters and its sources ask for. No Kedro here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cvae_mnist.glue.saving import atomic_path, sha256_of

SUFFIX = ".lineage.json"
# settings that change where or how fast a run computes, not what it computes
RUNTIME = {
    "training": {
        "device",
        "resume",
        "fast_path",
        "compile",
        "num_threads",
        "test_batch_size",
        "deterministic",
    },
    "evaluation": {"device", "batch_size"},
    "generation": {"device"},
}


def parameters_of(name: str, value: Any) -> dict[str, Any]:
    """The flat ``section.key`` values of one ``params:`` input that shape results."""
    if isinstance(value, BaseModel):
        skip = RUNTIME.get(name, set())
        return {f"{name}.{k}": v for k, v in value.model_dump().items() if k not in skip}
    if isinstance(value, Mapping):
        return {f"{name}.{k}": v for k, v in value.items() if k not in RUNTIME.get(name, set())}
    return {name: value}


def signature(path: Path, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a file; the SHA-256 of ``known`` is reused when
    the file's size and modification time are still the ones recorded there."""
    stat = path.stat()
    if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": known["sha256"]}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_of(path)}


def record_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record of ``path``, or None where there is none, it cannot be read, or it was
    written for another version of the file (a file not written through the catalog)."""
    try:
        record = json.loads(record_path(path).read_text())
        if signature(path, record["file"])["sha256"] != record["file"]["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def write_record(path: Path, record: dict[str, Any]) -> None:
    with atomic_path(record_path(path)) as tmp:
        tmp.write_text(json.dumps({**record, "file": signature(path)}, indent=1, default=str))


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def changed_setting(name: str, record: Mapping[str, Any], parameters: Mapping[str, Any]) -> str | None:
    """Why the file ``name`` of ``record`` no longer fits ``parameters`` (flat, as
    :func:`parameters_of` gives them), or None if it still does."""
    for key, made_with in record.get("parameters", {}).items():
        if key in parameters and parameters[key] != made_with:
            return f"{name} was made with {key} = {_show(made_with)}, and the parameters now give {_show(parameters[key])}"
    return None


def changed_source(name: str, record: Mapping[str, Any], root: Path) -> str | None:
    """Why the file ``name`` of ``record`` no longer fits the files it was made from (paths
    relative to ``root``), or None if it still does."""
    for source, seen in record.get("inputs", {}).items():
        source_path = root / source
        if source_path.exists() and signature(source_path, seen)["sha256"] != seen["sha256"]:
            return f"{name} was made from {source} as it was before {source} was written again"
    return None


def relative(path: str | os.PathLike, root: Path) -> str:
    """``path`` relative to the project root when it is inside it (records stay valid in a copy)."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
