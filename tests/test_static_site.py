"""The static Kedro-Viz site server: a reload of an app view gets the app, not a 404."""

from __future__ import annotations

import functools
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from cvae_mnist.glue.static_site import SinglePageHandler


@pytest.fixture
def site(tmp_path):
    (tmp_path / "index.html").write_text("<title>Kedro-Viz</title>")
    (tmp_path / "404.html").write_text("<title>Kedro-Viz</title><!-- app -->")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "main").write_text('{"nodes": []}')
    handler = functools.partial(SinglePageHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_an_app_view_reloads_as_the_app(site):
    assert _get(site + "/workflow") == (200, "<title>Kedro-Viz</title><!-- app -->")
    assert _get(site + "/?sid=abc") == (200, "<title>Kedro-Viz</title>")


def test_files_are_served_as_they_are(site):
    assert _get(site + "/api/main") == (200, '{"nodes": []}')
