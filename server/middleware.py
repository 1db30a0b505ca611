"""Pure ASGI middlewares (no BaseHTTPMiddleware, so disconnect detection keeps working).

- `RequestMetrics`: counts requests by route template and status.
- `ApiKeyAuth`: `Authorization: Bearer <key>` except on the open routes (`is_open`), constant-time compare.
- `BodyLimit`: 413 for bodies over the limit, by Content-Length or by counting what arrives.
- `UnexpectedErrors`: an exception no handler took is answered with the 500 error body, and the
  keep-alive connection stays usable.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_payload, unexpected_error
from server.metrics import Metrics

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/", "/playground"})
# The playground page and its static files carry no data; the key is typed into the page and sent by its calls.
OPEN_PREFIXES = ("/playground/",)


def is_open(path: str) -> bool:
    """Routes that need no API key: liveness and the playground's static files."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def _send_error(
    send: Send, status: int, message: str, type: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps(error_payload(status, message, type)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=path, status=str(status)).inc()


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):
            await _send_error(
                send,
                401,
                "missing or wrong API key (send `Authorization: Bearer <key>`)",
                "authentication_error",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads the body (at most `max_bytes`) before the app runs, then replays it; 413 beyond the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away before sending the whole body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        await _send_error(
            send, 413, f"request body is larger than {self.max_bytes} bytes", "request_too_large", []
        )


class UnexpectedErrors:
    """The 500 for an exception that no handler took, sent here so that nothing re-raises it.

    Starlette's outermost error middleware answers such an exception and then re-raises it, and uvicorn
    closes the connection after a response that it thinks went wrong, under a client that is about to reuse
    it (the next request on a pooled connection fails). Once a response has started (a stream), there is
    nothing left to answer: the exception goes on, and uvicorn ends that response by closing the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            log.error("unexpected error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            error = unexpected_error(exc)
            await _send_error(send, error.status, error.message, error.type, [])


def route_table(app: Any, prefix: str = "") -> list[tuple[str, set[str]]]:
    """(path, methods) of every route of an app, included routers flattened: what the auth test walks."""
    out: list[tuple[str, set[str]]] = []
    for route in app.routes:
        path = getattr(route, "path", None)
        if path is not None:
            out.append((prefix + path, set(getattr(route, "methods", None) or {"GET"})))
            continue
        ctx = getattr(route, "include_context", None)  # FastAPI >= 0.13x keeps included routers nested
        if ctx is not None:
            out.extend(route_table(ctx.included_router, prefix + (ctx.prefix or "")))
    return out
