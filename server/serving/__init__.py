"""Serving: what a route calls, one serving object per endpoint family (vLLM's `serving_*` shape), over three
shared parts that know the limits and the catalog but no HTTP framework beyond raising `ApiError`: steering
resolution (`steering`), request building (`requests`) and the request lifecycle (`lifecycle`). `Service` holds
them all over one engine; `/ready` and `/metrics` answer before it exists (`health`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.engine.client import EngineClient
from server.metrics import Metrics
from server.serving.chat import ChatServing
from server.serving.completions import CompletionServing
from server.serving.generate import GenerateServing
from server.serving.lifecycle import RequestLifecycle
from server.serving.models import ModelsServing
from server.serving.requests import RequestBuilder
from server.serving.steering import SteeringResolver
from server.serving.tokenize import TokenizerServing
from server.serving.vectors import VectorsServing
from server.settings import ServerSettings


@dataclass(frozen=True)
class Service:
    """The serving object of each endpoint family over one engine and catalog (a route makes one call)."""

    generate: GenerateServing
    completions: CompletionServing
    chat: ChatServing
    models: ModelsServing
    tokenizer: TokenizerServing
    vectors: VectorsServing

    @classmethod
    def over(
        cls, engine: EngineClient, catalog: Any, settings: ServerSettings, metrics: Metrics, started: float
    ) -> Service:
        steering = SteeringResolver(engine, catalog, settings)
        requests = RequestBuilder(engine, settings, steering)
        lifecycle = RequestLifecycle(engine, settings, metrics)
        return cls(
            generate=GenerateServing(engine, requests, lifecycle),
            completions=CompletionServing(engine, steering, requests, lifecycle),
            chat=ChatServing(engine, steering, requests, lifecycle),
            models=ModelsServing(engine, catalog, int(started)),
            tokenizer=TokenizerServing(engine, steering, requests),
            vectors=VectorsServing(catalog),
        )
