"""The project's catalog and parameters for the benchmark scripts (run from the project root)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project


@contextmanager
def project_catalog(env: str | None, required: tuple[str, ...] = ()) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(catalog, params)`` of the Kedro project in the current folder.

    Exits with one message, before anything runs, if a ``required`` dataset does not exist yet.
    """
    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        missing = [name for name in required if not context.catalog.exists(name)]
        if missing:
            where = f" --env {env}" if env else ""
            raise SystemExit(
                f"Error: {', '.join(missing)} not found for environment {env or 'local'}: "
                f"run `kedro run{where}` first (see the README)."
            )
        yield context.catalog, context.params
