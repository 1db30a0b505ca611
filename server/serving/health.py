"""Serving of `GET /ready` and `GET /metrics` (`/health` needs nothing): readiness with the engine's limits and
load, and the Prometheus text. Answers while the model loads, so it reads the server's runtime, not a `Service`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from server.engine.client import EngineClient, EngineLoad
from server.metrics import Metrics
from server.protocol.health import ReadyResponse, ReadyStatus
from server.settings import ServerSettings


class Runtime(Protocol):
    """What readiness reads of the server's runtime (`server.runtime.ServerRuntime`)."""

    settings: ServerSettings
    metrics: Metrics
    status: ReadyStatus
    detail: str | None

    @property
    def engine(self) -> EngineClient | None: ...


@dataclass(frozen=True)
class Readiness:
    """The /ready answer: its body, status code (200 once ready, else 503) and headers."""

    body: ReadyResponse
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


class HealthServing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def ready(self) -> Readiness:
        rt = self.runtime
        engine = rt.engine
        load = engine.load() if engine is not None else EngineLoad()
        body = ReadyResponse(
            status=rt.status,
            detail=rt.detail,
            model=engine.name if engine is not None else None,
            limits=rt.settings.public_limits(),
            queue_depth=load.queue_depth,
            running=load.running,
            engine=engine.describe() if engine is not None else None,
        )
        if rt.status == "ready":
            return Readiness(body, 200)
        return Readiness(body, 503, {"Retry-After": str(rt.settings.retry_after_s)})

    def metrics(self) -> bytes:
        """The Prometheus text, with the queue depth and running rows of this moment."""
        rt = self.runtime
        if rt.engine is not None:
            load = rt.engine.load()
            rt.metrics.queue_depth.set(load.queue_depth)
            rt.metrics.running.set(load.running)
        return rt.metrics.render()
