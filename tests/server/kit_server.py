"""The real server for a test: the app under uvicorn in a thread on a free loopback port (`run_server`), the
settings of a tiny world (`settings_for`), and a reader of server-sent events (`parse_sse`)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from server.app import create_app
from server.engine.model import LoadedModel
from server.runtime import ServerRuntime
from server.settings import ServerSettings
from tests.server.kit_doubles import installed, runner_double
from tests.server.kit_world import TinyWorld


def settings_for(world: TinyWorld, **overrides: Any) -> ServerSettings:
    base: dict[str, Any] = {
        "model": str(world.model),
        "sae": [str(world.sae)],
        "vectors": str(world.catalog),
        "device": "cpu",
        "catalog_poll_s": 0.2,
        "max_batch": 8,
        "max_configs_per_batch": 8,
        "max_new_tokens": 64,
        "default_max_new_tokens": 16,
    }
    base.update(overrides)
    return ServerSettings(**base)


@dataclass
class RunningServer:
    url: str
    runtime: ServerRuntime
    app: Any

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


@contextlib.contextmanager
def run_server(
    settings: ServerSettings,
    engine: LoadedModel | None = None,
    wait_ready: bool = True,
    *,
    faults: bool = False,
    step_delay_s: float = 0.0,
    ready_timeout: float = 60,
) -> Iterator[RunningServer]:
    """The real app under uvicorn in a thread, on a free loopback port (given `ready_timeout` seconds to be ready).

    `faults` (prompts with `[[fault:...]]` markers fail) and `step_delay_s` (a sleep per decode step) put a
    runner double (`kit_doubles`) under the engine for the server's lifetime.
    """
    with contextlib.ExitStack() as stack:
        if engine is not None and (faults or step_delay_s):
            engine.reserve(settings.max_batch, settings.max_neg_features)  # start-up then keeps this runner
            stack.enter_context(installed(engine, faults=faults, step_delay_s=step_delay_s))
        elif faults or step_delay_s:  # the server loads its own model: the double goes on the class
            double = runner_double(step_delay_s=step_delay_s)
            assert not faults, "fault markers need a preloaded engine (its tokenizer reads them)"
            stack.callback(setattr, LoadedModel, "runner_class", LoadedModel.runner_class)
            LoadedModel.runner_class = double
        yield from _serve(settings, engine, wait_ready, ready_timeout)


def _serve(
    settings: ServerSettings, engine: LoadedModel | None, wait_ready: bool, ready_timeout: float
) -> Iterator[RunningServer]:
    runtime = ServerRuntime(settings)
    app = create_app(settings, engine=engine, runtime=runtime)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = RunningServer(url=f"http://127.0.0.1:{port}", runtime=runtime, app=app)
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        if wait_ready:
            api_key = settings.api_key.get_secret_value() if settings.api_key else None
            wait_until_ready(running.url, api_key, timeout=ready_timeout)
        yield running
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_until_ready(url: str, api_key: str | None = None, timeout: float = 60) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = httpx.get(f"{url}/ready", headers=headers, timeout=5)
            if last.status_code == 200:
                return
            if last.json().get("status") == "failed":
                raise RuntimeError(f"server failed to start: {last.text}")
        time.sleep(0.05)
    raise TimeoutError(f"server not ready: {last.text if last is not None else 'no answer'}")


def parse_sse(lines: list[str]) -> list[tuple[str | None, str]]:
    """(event, data) pairs of a server-sent event stream given as text lines."""
    out: list[tuple[str | None, str]] = []
    event: str | None = None
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            out.append((event, line[len("data: ") :]))
            event = None
    return out
