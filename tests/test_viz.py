"""Kedro-Viz, checked in a real browser: the pipelines' graph and the dataset previews.

A tiny project is run, `kedro viz run` serves it on 127.0.0.1, and headless Chromium
(Debian's ``chromium``, driven by Playwright for Python) opens it. Skipped, with the reason,
where no browser is installed (``apt-get install chromium``; ``.ci/run`` installs it).
Set ``CVAE_VIZ_SCREENSHOT=docs/images/kedro-viz.png`` to keep the screenshot.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest

from mnist_fixtures import HANG, make_test_project, run_session, tracking_uri

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (make install)")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no Chromium to drive: `apt-get install chromium` (Debian)"
)
# the view the README links to: parameters shown, every pipeline's nodes laid out
VIEW = "?types=nodes,datasets,parameters&expandAllPipelines=true"


def _free_port() -> int:
    """A free port below 49152 (kedro viz refuses the ephemeral range)."""
    for port in random.Random().sample(range(20_000, 49_000), 200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port found between 20000 and 49000")


@contextmanager
def _serving(command: list[str], cwd: Path, ready: str, log: Path) -> Iterator[None]:
    """``command`` started in its own process group, until ``ready`` answers 200; stopped after."""
    server = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a web server may start children: stop the whole group
    )
    try:
        deadline = time.monotonic() + HANG
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"{command[0]} did not serve {ready} (exit code {server.poll()}):\n{log.read_text()[-3000:]}"
                    )
                time.sleep(0.5)
        yield
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def viz_url(tmp_path_factory):
    project = make_test_project(tmp_path_factory.mktemp("viz"))
    run_session(project)  # previews read the files a run wrote
    port = _free_port()
    command = [str(Path(sys.executable).parent / "kedro"), "viz", "run", "--host", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}/"
    with _serving(
        command + ["--port", str(port), "--no-browser", "--env", "test"],
        project,
        url + "api/main",
        project / "viz.log",
    ):
        yield url


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module: Playwright's sync API runs one driver per thread."""
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(viz_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(HANG * 1000)  # a busy machine is slow, not broken
    # no onboarding hints over the graph on a first visit
    page.add_init_script('localStorage.setItem("KedroViz", JSON.stringify({"showFeatureHints": false}))')
    page.goto(viz_url + VIEW)
    page.locator(".pipeline-node").first.wait_for(timeout=HANG * 1000)
    yield page
    page.close()


def _node(page, name: str):
    return page.locator(".pipeline-node", has=page.get_by_text(name, exact=True))


def test_the_graph_shows_every_pipelines_nodes_and_the_parameters(page):
    for name in ("decode_mnist_node", "train_cvae_node", "fit_prior_node", "evaluate_likelihood_node"):
        assert _node(page, name).is_visible(), name
    assert _node(page, "params:training").is_visible()  # parameters shown from the first view
    if target := os.environ.get("CVAE_VIZ_SCREENSHOT"):
        page.goto(page.url.split("?")[0] + "?types=nodes,datasets,parameters")  # pipelines collapsed
        page.locator(".pipeline-node").first.wait_for()
        dismiss = page.get_by_text("Dismiss", exact=True)  # Kedro-Viz's upgrade banner, offline
        if dismiss.count():
            dismiss.first.click()
        page.wait_for_timeout(2000)
        page.screenshot(path=target)


MAIN_NODES = {
    "data_ingestion": ("decode_mnist_node", "mnist_train", "mnist_test"),
    "training": ("train_cvae_node", "fit_prior_node", "cvae_model"),
    "evaluation": (
        "evaluate_reconstructions_node",
        "evaluate_generation_node",
        "evaluate_label_swap_node",
        "metrics",
    ),
    "generation": ("generate_digits_node", "generated_digits"),
}


@pytest.mark.parametrize("pipeline", MAIN_NODES)
def test_each_pipelines_first_view_shows_its_main_nodes_without_a_click(viz_url, browser, pipeline):
    """The view docs/images/kedro-viz-<pipeline>.png shows: the pipeline opened, expanded and
    fitted to the window, its main nodes inside it."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(HANG * 1000)
    page.add_init_script('localStorage.setItem("KedroViz", JSON.stringify({"showFeatureHints": false}))')
    page.goto(f"{viz_url}{VIEW}&pid={pipeline}")
    page.locator(".pipeline-node").first.wait_for()
    page.wait_for_timeout(1500)  # the graph's zoom-to-fit transition
    for name in MAIN_NODES[pipeline]:
        assert _node(page, name).count() == 1, name  # drawn (a collapsed pipeline draws one box)
        box = _node(page, name).bounding_box()
        inside = (
            box["x"] >= 0
            and box["y"] >= 0
            and box["x"] + box["width"] <= 1400
            and box["y"] + box["height"] <= 900
        )
        assert inside, (name, box)
    page.close()


def test_the_metrics_table_and_a_figure_are_previewed(page):
    page.goto(page.url.split("?")[0] + VIEW)
    _node(page, "metrics").dispatch_event("click")  # the minimap may lie over it
    panel = page.locator(".pipeline-metadata")
    panel.get_by_text("bce_per_image").first.wait_for(timeout=HANG * 1000)  # the table's header
    _node(page, "reconstructions_figure").dispatch_event("click")
    image = panel.locator("img[src^='data:image/png;base64,']")
    image.first.wait_for(timeout=HANG * 1000)
    assert image.first.evaluate("img => img.naturalWidth") > 100


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    """``mlflow ui`` on a project's store after one tiny full run: (its URL, the run)."""
    project = make_test_project(tmp_path_factory.mktemp("mlflow-ui"))
    run_session(project)
    store = tracking_uri(project)
    (run,) = mlflow.MlflowClient(store).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(store).search_experiments() if e.name == "cvae_mnist"]
    )
    port = _free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store]
    url = f"http://127.0.0.1:{port}/"
    with _serving(
        command + ["--host", "127.0.0.1", "--port", str(port)],
        project,
        url + "health",
        project / "mlflow-ui.log",
    ):
        yield url, run


def test_the_mlflow_ui_opens_the_experiment_on_its_training_runs_and_their_metrics(mlflow_ui, browser):
    url, run = mlflow_ui
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(HANG * 1000)  # a busy machine is slow, not broken
    # the link `make mlflow-ui` prints: MLflow 3.17 opens its GenAI overview without it
    page.goto(f"{url}#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning")
    page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=HANG * 1000)  # the runs, first
    page.get_by_text(run.info.run_name, exact=True).first.click()
    page.get_by_text("test.bce_per_image").first.wait_for(timeout=HANG * 1000)  # the run's metrics
    if target := os.environ.get("CVAE_MLFLOW_SCREENSHOT"):
        page.wait_for_timeout(2000)
        page.screenshot(path=target)
    page.close()
