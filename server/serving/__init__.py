"""Serving logic shared by /generate and /v1, in three parts that know the limits and the catalog but no HTTP
framework beyond raising `ApiError`: steering resolution (`steering`), request building (`requests`) and the
request lifecycle (`lifecycle`). `Service` holds one of each over one engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.engine.client import EngineClient
from server.metrics import Metrics
from server.serving.lifecycle import RequestLifecycle
from server.serving.requests import RequestBuilder
from server.serving.steering import SteeringResolver
from server.settings import ServerSettings


@dataclass(frozen=True)
class Service:
    """The engine and the three serving parts over it (what a route needs)."""

    engine: EngineClient
    steering: SteeringResolver
    requests: RequestBuilder
    lifecycle: RequestLifecycle

    @classmethod
    def over(cls, engine: EngineClient, catalog: Any, settings: ServerSettings, metrics: Metrics) -> Service:
        steering = SteeringResolver(engine, catalog, settings)
        return cls(
            engine=engine,
            steering=steering,
            requests=RequestBuilder(engine, settings, steering),
            lifecycle=RequestLifecycle(engine, settings, metrics),
        )
