"""Serve the static Kedro-Viz site of `kedro viz build` as a static host would: a view's address
with no file behind it gets the app page (``404.html``), where ``python -m http.server`` says 404.

    python -m cvae_mnist.glue.static_site [folder] [--port 4142]     # make viz-build serves ./build
"""

from __future__ import annotations

import argparse
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class SinglePageHandler(SimpleHTTPRequestHandler):
    """Files as they are; any other address gets the app page (``404.html``) with status 200."""

    def send_head(self):  # noqa: ANN201 - SimpleHTTPRequestHandler's own signature
        path = Path(self.translate_path(self.path))
        if not path.exists() and (Path(self.directory) / "404.html").exists():
            self.path = "/404.html"
        return super().send_head()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", nargs="?", default="build", help="the site's folder (default: build)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4142)
    args = parser.parse_args()
    if not (Path(args.folder) / "index.html").exists():
        parser.error(f"{args.folder}/index.html not found: run `kedro viz build` first")
    handler = functools.partial(SinglePageHandler, directory=args.folder)
    with ThreadingHTTPServer((args.host, args.port), handler) as server:
        print(f"Serving {args.folder}/ on http://{args.host}:{args.port}/ (Ctrl-C stops)")  # noqa: T201
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
