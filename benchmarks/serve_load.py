"""Load test of the served model: requests per second, latency and the server's memory.

Run from the project root after `make run` (which registers the champion):

    .venv/bin/python benchmarks/serve_load.py                 # about 1.5 minutes
    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 30

Starts the model server on the champion (`models:/cvae_generator@champion`) on a free
loopback port, exactly as `make serve` does (`python -m cvae_mnist.glue.model_server`), then sends requests from `--clients` threads
for `--seconds` each, in three shapes: a typical request (one digit, 16 images), a request
at the cap (4 rows of 256 images: 1,024, the most one request may ask), and a request far
over the cap (1,000 rows of 256), which the server must refuse at once. Prints, per shape,
the answers' status codes, requests per second, median, 95th-percentile and slowest latency
(no request may pass the 30 s deadline), and the peak resident memory of the server's processes (sampled every 0.1 s).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
from _project import positive_int, script_parser

BIN = Path(sys.executable).parent
SHAPES = {
    "typical (1 row x 16 images)": lambda i: [{"digit": i % 10, "n_samples": 16, "seed": i}],
    "at the cap (4 rows x 256 = 1,024 images)": lambda i: (
        [{"digit": i % 10, "n_samples": 256, "seed": i}] * 4
    ),
    "over the cap (1,000 rows x 256, refused)": lambda i: [{"digit": 1, "n_samples": 256, "seed": i}] * 1000,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port: int, rows: list[dict]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def resident(process: psutil.Process) -> int:
    try:
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def load(port: int, server: psutil.Process, shape, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    peak = [resident(server)]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < stop:
            started = time.perf_counter()
            code = post(port, shape(i))
            with lock:
                latencies.append(time.perf_counter() - started)
                codes[code] += 1
            i += clients

    def monitor() -> None:
        while time.monotonic() < stop:
            peak[0] = max(peak[0], resident(server))
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)] + [
        threading.Thread(target=monitor)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "codes": dict(codes),
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p95": latencies[max(0, int(0.95 * len(latencies)) - 1)],
        "max": latencies[-1],
        "peak_mib": peak[0] / 2**20,
    }


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--clients", type=positive_int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--seconds", type=positive_int, default=20, help="seconds per shape (default 20)")
    args = parser.parse_args()
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    uri = subprocess.run(
        [BIN / "python", "-m", "cvae_mnist.glue.serving"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if uri.returncode != 0:
        raise SystemExit(uri.stderr.strip() or "Error: no champion model; run `make run` first.")
    port = free_port()
    process = subprocess.Popen(
        [BIN / "python", "-m", "cvae_mnist.glue.model_server", uri.stdout.strip(), "--port", str(port)],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit("Error: the model server exited; try `make serve` to see why.") from None
                time.sleep(0.5)
        server = psutil.Process(process.pid)
        print(
            f"serving {uri.stdout.strip()} on 127.0.0.1:{port}; {args.clients} clients, {args.seconds} s per shape"
        )
        print(f"server's resident memory at rest: {resident(server) / 2**20:.0f} MiB")
        print(
            "| request | answers | requests/s | p50 latency | p95 latency | slowest | server's peak memory |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, shape in SHAPES.items():
            r = load(port, server, shape, args.clients, args.seconds)
            codes = ", ".join(f"{count} x {code}" for code, count in sorted(r["codes"].items()))
            print(
                f"| {name} | {codes} | {r['rps']:.1f} | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms | {r['max']:.1f} s | {r['peak_mib']:.0f} MiB |",
                flush=True,
            )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
