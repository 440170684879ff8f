"""The README's pictures of Kedro-Viz and of the MLflow UI, taken from this project as it stands.

    .venv/bin/python benchmarks/screenshots.py        # after make run; about a minute

Starts `kedro viz run` and `mlflow ui` on the project's own store, opens each first view a
user meets in Debian's Chromium (Playwright), and writes `docs/images/kedro-viz.png` (every
pipeline, expanded), `docs/images/kedro-viz-<pipeline>.png` (each pipeline on its own) and
`docs/images/mlflow-run.png` (the latest full default run's page). Needs `chromium`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
from _project import script_parser
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGES = ROOT / "docs" / "images"
VIEW = "types=nodes,datasets,parameters&expandAllPipelines=true"
PIPELINES = ("data_ingestion", "training", "evaluation", "generation")


def free_port() -> int:
    """A free port below 49152 (kedro viz refuses the ephemeral range)."""
    for port in random.Random().sample(range(20_000, 49_000), 200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise SystemExit("Error: no free port between 20000 and 49000.")


def serve(command: list[str], ready: str) -> subprocess.Popen:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while True:
        try:
            with urllib.request.urlopen(ready, timeout=5):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(
                    f"Error: {command[0]} exited ({process.returncode}); run it by hand to see why."
                )
            time.sleep(0.5)


def settle(page, wait: str) -> None:
    page.locator(wait).first.wait_for()
    banner = page.get_by_text("Dismiss", exact=True)  # Kedro-Viz's upgrade banner, offline
    if banner.count():
        banner.first.click()
    page.wait_for_timeout(1500)  # the graph's transition


def main() -> None:
    script_parser(__doc__).parse_args()
    if not shutil.which("chromium"):
        raise SystemExit("Error: no chromium: `apt-get install chromium` (Debian).")
    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    experiment = client.get_experiment_by_name("cvae_mnist")
    runs = (
        client.search_runs([experiment.experiment_id], "tags.mlflow.runName LIKE 'local default%'")
        if experiment
        else []
    )
    if not runs:
        raise SystemExit("Error: no full default run in mlflow.db: `make run` first.")
    viz_port, ui_port = free_port(), free_port()
    servers = [
        serve([str(BIN / "kedro"), "viz", "run", "--host", "127.0.0.1", "--port", str(viz_port), "--no-browser"],
              f"http://127.0.0.1:{viz_port}/api/main"),
        serve([str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
               "--port", str(ui_port)], f"http://127.0.0.1:{ui_port}/health"),
    ]  # fmt: skip
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script(
                'localStorage.setItem("KedroViz", JSON.stringify({"showFeatureHints": false}))'
            )
            for name in ("", *PIPELINES):
                page.goto(f"http://127.0.0.1:{viz_port}/?{VIEW}" + (f"&pid={name}" if name else ""))
                settle(page, ".pipeline-node")
                target = IMAGES / (f"kedro-viz-{name}.png" if name else "kedro-viz.png")
                page.screenshot(path=target)
                print(f"wrote {target.relative_to(ROOT)}")
            run = runs[0]
            page.goto(
                f"http://127.0.0.1:{ui_port}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
                "?workflowType=machine_learning"
            )
            page.get_by_text("test.bce_per_image").first.wait_for()
            assistant = page.locator("[aria-label='Close']")  # MLflow 3.17's assistant panel
            if assistant.count():
                assistant.first.click()
            page.get_by_text("Model metrics", exact=True).first.click()
            page.get_by_placeholder("Search metric charts").fill("training.")  # the per-epoch charts
            page.wait_for_timeout(3000)
            page.screenshot(path=IMAGES / "mlflow-run.png")
            print(f"wrote docs/images/mlflow-run.png (run {run.info.run_name!r})")
            browser.close()
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
