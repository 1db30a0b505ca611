"""An unexpected exception is a 500 in the error schema, and the client's keep-alive connection survives it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import uvicorn

from server.app import create_app
from server.engine.model import LoadedModel
from server.uvicorn_server import uvicorn_config
from tests.server.kit_server import settings_for, wait_until_ready
from tests.server.kit_world import TinyWorld


def test_unexpected_error_is_a_500_and_the_connection_stays_usable(
    tiny_world: TinyWorld, tiny_engine: LoadedModel
) -> None:
    settings = settings_for(tiny_world)
    app = create_app(settings, engine=tiny_engine)

    async def boom() -> None:
        raise RuntimeError("a bug at 0xdeadbeef")

    app.add_api_route("/boom", boom, methods=["GET"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="critical"))  # as `steer serve` runs it
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/boom")
        first = conn.getresponse()
        body = json.loads(first.read())
        assert first.status == 500 and first.getheader("connection") != "close"
        assert body["error"] == {
            "message": "internal error: RuntimeError",
            "type": "internal_error",
            "param": None,
            "code": 500,
        }
        used = conn.sock
        time.sleep(0.3)  # a server that drops the connection has done so by now
        conn.request("GET", "/health")
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read())["status"] == "ok"
        assert conn.sock is used, "the second request needed a new connection"
        # The metrics count the 500 under its route.
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        assert 'route="/boom",status="500"' in text
        conn.close()
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
