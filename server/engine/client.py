"""`EngineClient`: the one interface between the HTTP side and an engine.

The HTTP side (`server.serving`, `server.routes`) builds `Row`s of token ids with sampling and steering,
submits them as one `Request`, reads its `Event`s (`Request.stream`) and cancels it (`Request.cancel`); it asks
the engine for its tokenizer and limits, to check steering at admission, and for its load and description
(`/ready`, `/metrics`). The native engine (`server.engine.native.NativeEngine`) is one implementation; an engine
on another runtime implements the same protocol, with the same row, request and event types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from server.engine.request import Request, Row, SteerSpec
from vectors.vector import SteeringVector


class QueueFull(Exception):
    """The waiting queue is at its limit (→ 429)."""


class NotAccepting(Exception):
    """The engine is draining, stopped or not started (→ 503)."""


class SteeringUnavailable(Exception):
    """The engine could not load a request's steering after admission, e.g. a vector file that changed or
    broke between the front end's catalog scan and a worker's read (→ 409, with this message)."""


@dataclass(frozen=True)
class EngineLoad:
    """How busy the engine is now."""

    queue_depth: int = 0  # requests waiting for admission
    running: int = 0  # rows in the batch
    in_flight: int = 0  # requests admitted or waiting


@dataclass(frozen=True)
class EngineDescription:
    """What the engine runs on and which decode path it takes (`/ready` shows it as it is: `engine`)."""

    device: str
    dtype: str
    slots: int
    max_context: int
    kv_cache_bytes: int
    max_neg_features: int
    mode: str  # compiled, partly compiled, or eager: how decode steps run
    mode_reason: str | None  # why a bucket (or the engine) runs eagerly
    buckets: Mapping[int, str] = field(default_factory=dict)  # batch-size bucket -> compiled | eager: why
    compile_s: float = 0.0
    threads: int = 0  # torch's intra-op threads in this process (the CPU decode step's parallelism)
    interop_threads: int = 0  # torch's inter-op threads in this process
    backend: str = "native"  # which engine: native or vllm
    parallel: Mapping[str, int | str] = field(default_factory=dict)  # the vLLM engine's parallel layout


class EngineClient(Protocol):
    """What the HTTP side needs of an engine. `submit`, `check_room` raise `QueueFull` / `NotAccepting`."""

    @property
    def name(self) -> str:
        """The served model's name (the base model id of `/v1`)."""
        ...

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    @property
    def context_length(self) -> int: ...

    @property
    def vocab_size(self) -> int:
        """Token ids a prompt may hold: known to the tokenizer and inside the model's embedding."""
        ...

    def encode(
        self, *, prompt: str | None = None, messages: Sequence[Mapping[str, str]] | None = None
    ) -> list[int]:
        """Token ids of a prompt or chat, formatted exactly as the trainer formats them."""
        ...

    def adhoc_vector(self, feature: int, layer: int | None = None) -> SteeringVector:
        """A single-feature SAE vector for `sae:<feature>` steering (`ValueError` when there is no such SAE)."""
        ...

    def check_steer(self, spec: SteerSpec) -> None:
        """`ValueError` when `spec` cannot be steered with (so it fails its request, never a batch)."""
        ...

    def check_room(self, rows: int) -> None:
        """Raise now if a request of `rows` rows would be refused (cheap; `submit` checks again)."""
        ...

    def submit(self, rows: list[Row], *, stream: bool = True) -> Request:
        """Queue the rows as one request; its events arrive on the calling event loop."""
        ...

    def load(self) -> EngineLoad: ...

    def describe(self) -> EngineDescription: ...

    async def drain(self, timeout: float) -> bool:
        """Stop admitting and wait for in-flight requests; True if all finished in time."""
        ...

    def shutdown(self) -> None:
        """Stop the engine; unfinished rows are cancelled."""
        ...
