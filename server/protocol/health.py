"""The protocol of `GET /health` and `GET /ready`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
)

from server.engine.client import EngineDescription
from server.protocol.common import ResponseModel


class HealthResponse(ResponseModel):
    status: Literal["ok"] = "ok"


ReadyStatus = Literal["loading", "ready", "draining", "failed"]


class ReadyResponse(ResponseModel):
    status: ReadyStatus
    detail: str | None = None
    model: str | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    queue_depth: int = 0
    running: int = 0
    engine: EngineDescription | None = Field(
        default=None,
        description="What runs the model: slots, memory, decode path (compiled or eager, and why).",
    )
