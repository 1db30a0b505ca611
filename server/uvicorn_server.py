"""Run the app under uvicorn with draining: the first SIGTERM/SIGINT stops admitting, waits, then exits."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn

from server.app import create_app
from server.runtime import ServerRuntime
from server.settings import ServerSettings

log = logging.getLogger("server")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first signal drains (new requests get 503) before the normal shutdown."""

    def __init__(self, config: uvicorn.Config, runtime: ServerRuntime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.exit_code = 0
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if self._draining or loop is None:
            super().handle_exit(sig, frame)  # a second signal stops at once
            return
        self._draining = True
        log.info("%s received: draining (new requests get 503)", signal.Signals(sig).name)
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        ok = await self.runtime.drain()
        log.info("drain %s; exiting", "complete" if ok else "timed out")
        self.should_exit = True

    def fatal(self, reason: str) -> None:
        """Start-up failed, or the engine died: exit non-zero instead of serving a server that can never be ready."""
        log.error("%s", reason)
        self.exit_code = 1
        self.should_exit = True


def uvicorn_config(app: Any, settings: ServerSettings, log_level: str = "info") -> uvicorn.Config:
    """How `steer serve` runs uvicorn. The h11 parser, because it bounds the request head
    (`max_header_bytes`, else 431/400); httptools accepts headers of any size (50 MB were tried)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        lifespan="on",
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def run_server(settings: ServerSettings, log_level: str = "info") -> int:
    """Serve until a signal; returns the process exit code."""
    runtime = ServerRuntime(settings)
    app = create_app(settings, runtime=runtime)
    server = DrainingServer(uvicorn_config(app, settings, log_level), runtime)
    runtime.on_fatal = server.fatal
    asyncio.run(server.serve())
    return server.exit_code
