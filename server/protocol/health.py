"""The protocol of `GET /health` and `GET /ready`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
)

from server.protocol.common import ResponseModel


class HealthResponse(ResponseModel):
    status: Literal["ok"] = "ok"


class EngineInfo(ResponseModel):
    """What runs the model: its slots and the memory reserved for them at start-up."""

    device: str
    dtype: str
    slots: int
    max_context: int
    kv_cache_bytes: int
    max_neg_features: int
    mode: str = Field(description="compiled, partly compiled, or eager: how decode steps run")
    mode_reason: str | None = Field(default=None, description="why a bucket (or the engine) runs eagerly")
    buckets: dict[str, str] = Field(
        default_factory=dict, description="batch-size bucket -> compiled | eager: why"
    )
    compile_s: float = 0.0
    threads: int = Field(default=0, description="torch intra-op threads of the serving process")
    interop_threads: int = Field(default=0, description="torch inter-op threads of the serving process")
    backend: str = Field(default="native", description="the engine: native or vllm")
    parallel: dict[str, int | str] = Field(
        default_factory=dict,
        description="vllm: tensor_parallel_size, pipeline_parallel_size, distributed executor",
    )


class ReadyResponse(ResponseModel):
    status: Literal["ready", "loading", "draining", "failed"]
    detail: str | None = None
    model: str | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    queue_depth: int = 0
    running: int = 0
    engine: EngineInfo | None = None
