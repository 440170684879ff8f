"""``python -m cvae_mnist run [options]`` (or ``cvae-mnist run``) is ``kedro run [options]``:
the form that ``torchrun ... -m cvae_mnist run`` starts on every process."""

import sys
from pathlib import Path
from typing import Any

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project


def main(*args, **kwargs) -> Any:
    package_name = Path(__file__).parent.name
    configure_project(package_name)

    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive

    run = find_run_command(package_name)
    if len(sys.argv) > 1 and sys.argv[1] == "run":  # the word of `kedro run`, optional here
        del sys.argv[1]
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
