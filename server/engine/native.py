"""`NativeEngine`: the engine of this package behind `EngineClient` — the loaded model (`server.engine.model`)
and, once started, the scheduler's worker thread (`server.engine.scheduler`) that drives it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from server.engine.client import EngineDescription, EngineLoad, NotAccepting
from server.engine.model import LoadedModel
from server.engine.request import Request, Row, SteerSpec
from server.engine.scheduler import Scheduler, SchedulerLimits
from server.metrics import Metrics
from vectors.vector import SteeringVector


class NativeEngine:
    """An `EngineClient` over one loaded model; it admits requests once `start` has run."""

    def __init__(self, model: LoadedModel, metrics: Metrics | None = None) -> None:
        self.model = model
        self.metrics = metrics or Metrics()
        self.scheduler: Scheduler | None = None

    def start(self, limits: SchedulerLimits) -> None:
        """Start the worker thread (after the runner is reserved and compiled: it binds the runner now)."""
        self.scheduler = Scheduler(self.model, limits, self.metrics)
        self.scheduler.start()

    # --- the model ----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.model.tokenizer

    @property
    def context_length(self) -> int:
        return self.model.context_length

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def encode(
        self, *, prompt: str | None = None, messages: Sequence[Mapping[str, str]] | None = None
    ) -> list[int]:
        return self.model.encode(prompt=prompt, messages=messages)

    def adhoc_vector(self, feature: int, layer: int | None = None) -> SteeringVector:
        return self.model.adhoc_vector(feature, layer)

    def check_steer(self, spec: SteerSpec) -> None:
        self.model.check_steer(spec)

    # --- requests -----------------------------------------------------------------------------------------
    def check_room(self, rows: int) -> None:
        self._scheduler().check_room(rows)

    def submit(self, rows: list[Row], *, stream: bool = True) -> Request:
        return self._scheduler().submit(rows, stream=stream)

    def _scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise NotAccepting("the engine is not started")
        return self.scheduler

    # --- state --------------------------------------------------------------------------------------------
    def load(self) -> EngineLoad:
        s = self.scheduler
        if s is None:
            return EngineLoad()
        return EngineLoad(queue_depth=s.queue_depth, running=s.running_rows, in_flight=s.in_flight)

    def describe(self) -> EngineDescription:
        runner = self.model.runner
        status = runner.status
        return EngineDescription(
            device=str(runner.device),
            dtype=str(runner.dtype).removeprefix("torch."),
            slots=runner.slots,
            max_context=runner.max_context,
            kv_cache_bytes=runner.cache_bytes,
            max_neg_features=runner.max_neg,
            mode=status.mode,
            mode_reason=status.reason,
            buckets=dict(status.buckets),
            compile_s=status.compile_s,
            threads=torch.get_num_threads(),
            interop_threads=torch.get_num_interop_threads(),
        )

    async def drain(self, timeout: float) -> bool:
        return True if self.scheduler is None else await self.scheduler.drain(timeout)

    def shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown()
