"""Serve a logged CVAE generator over HTTP (``make serve``): MLflow's own scoring server behind
a guard that answers bad requests in one line and bounds each request's time and company.

    python -m cvae_mnist.glue.model_server [MODEL_URI] [--host 127.0.0.1] [--port 5001]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import mlflow
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from pydantic import ValidationError

from cvae_mnist.glue.serving import DEADLINE, REQUEST_SECONDS, GenerationRequest, champion_uri

BODY_LIMIT = 1 << 20  # 1 MiB; the largest request the model accepts (1,024 rows) is about 60 kB
AT_ONCE = 2  # requests generating at once; the others wait their turn, within their deadline
ROW_KEYS = ("inputs", "instances", "dataframe_records")  # MLflow's JSON forms that list rows as objects
MARGIN_SECONDS = 3.0  # the model stops drawing this long before the deadline: a last row, the answer

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware in front of the scoring server's ``/invocations``."""

    def __init__(self, app: Callable[..., Awaitable[None]], at_once: int = AT_ONCE) -> None:
        self.app, self.turns = app, asyncio.Semaphore(at_once)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + REQUEST_SECONDS - MARGIN_SECONDS
        body = await _body(dict(scope["headers"]), receive)  # ASGI gives lower-case header names
        if isinstance(body, tuple):
            return await _refuse(send, *body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # the client's disconnect, if it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await asyncio.wait_for(self.turns.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return await _refuse(send, 503, f"The server stayed busy for {REQUEST_SECONDS:.0f} s; try again.")
        try:
            DEADLINE.set(deadline)  # the copy of this context the model's thread runs in reads it
            await self.app(scope, replay, send)
        finally:
            self.turns.release()


async def _body(headers: dict[bytes, bytes], receive: Receive) -> bytes | tuple[int, str]:
    """The request's JSON body, or the status and message that refuse it."""
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1")
    if kind != "application/json":
        return (
            415,
            f"Send JSON with the header Content-Type: application/json (this request: {kind or 'none'}).",
        )
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > BODY_LIMIT:
        return 413, f"The body has {int(declared)} bytes; the most a request may send is {BODY_LIMIT}."
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > BODY_LIMIT:
            return 413, f"The body is over {BODY_LIMIT} bytes, the most a request may send."
        if not message.get("more_body"):
            break
    try:
        request = json.loads(body)
    except RecursionError:
        return 400, "The JSON body is nested too deeply to be a request."
    except ValueError as error:
        return 400, f"The body is not valid JSON ({error})."
    problem = _row_problem(request)
    return (400, problem) if problem else bytes(body)


def _row_problem(request: Any) -> str | None:
    """The first field of a row MLflow's own check would refuse, in one line (MLflow's message
    spells out the whole Pydantic model); None when every row is valid, or the rows are in a
    form MLflow checks itself."""
    rows = next((request[key] for key in ROW_KEYS if isinstance(request, dict) and key in request), None)
    for number, row in enumerate(rows if isinstance(rows, list) else []):
        try:
            GenerationRequest.model_validate(row)
        except ValidationError as error:
            item = error.errors()[0]
            field = ".".join(map(str, item["loc"])) or "the row"
            value = "" if item["type"] == "missing" else f" = {item['input']!r}"
            known = GenerationRequest.model_fields.get(field)
            meaning = f" ({known.description})" if known else ""
            return f"Row {number}: {field}{value}: {item['msg']}{meaning}."
    return None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="a model URI (default: the registered champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    if not port_is_free(args.host, args.port):
        raise SystemExit(
            f"Error: port {args.port} on {args.host} is in use (another `make serve`?): stop it, "
            "or serve on another port with `make serve PORT=5003`."
        )
    import uvicorn  # noqa: PLC0415 - MLflow's serving dependencies, needed only here
    from mlflow.pyfunc import scoring_server  # noqa: PLC0415

    os.environ.setdefault(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name, f"{REQUEST_SECONDS:.0f}")
    model = mlflow.pyfunc.load_model(args.model or champion_uri())
    uvicorn.run(RequestGuard(scoring_server.init(model)), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
