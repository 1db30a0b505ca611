"""The running server: load once (model, SAEs, catalog; the steps in `startup`), serve, poll the catalog, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine.client import EngineClient
from server.engine.compiled_step import CompileFailed
from server.engine.host import configure_threads
from server.engine.model import LoadedModel
from server.engine.native import NativeEngine
from server.engine.runner import CacheTooLarge
from server.engine.scheduler import SchedulerLimits
from server.metrics import Metrics
from server.protocol.health import ReadyStatus
from server.serving import Service
from server.serving.health import HealthServing
from server.settings import ServerSettings
from server.startup import engine_config, prepare_engine, vllm_options, warm_up
from vectors.errors import SteerError

log = logging.getLogger(__name__)


@dataclass
class ServerRuntime:
    """The running server: its status, engine, catalog and `Service` (None until loading succeeded), and
    `health` (answers from the start); loads in the background, polls the catalog, drains."""

    settings: ServerSettings
    metrics: Metrics = field(default_factory=Metrics)
    status: ReadyStatus = "loading"
    detail: str | None = "loading model"
    engine: EngineClient | None = None  # set once the model is loaded; admits requests once ready
    catalog: Any = None
    service: Service | None = None
    started: float = field(default_factory=time.time)
    on_fatal: Callable[[str], None] | None = (
        None  # set by `steer serve`: exit non-zero (start-up or engine failed)
    )
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    health: HealthServing = field(init=False)  # /ready and /metrics, answered from the first moment

    def __post_init__(self) -> None:
        self.health = HealthServing(self)

    # --- startup ------------------------------------------------------------------------------------------
    def start(self, engine: LoadedModel | None = None) -> None:
        """Begin loading in the background (so /health answers at once and /ready says "loading")."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._load(engine)))

    async def _load(self, engine: LoadedModel | None) -> None:
        if self.settings.backend == "vllm":
            await self._load_vllm()
            return
        s = self.settings
        try:
            if engine is None:  # a process of its own (a given engine keeps its caller's threads)
                configure_threads(s.threads)
                engine = await asyncio.to_thread(LoadedModel.load, engine_config(s))
            engine.name = s.served_name
            native = NativeEngine(engine, self.metrics)
            self.engine = native
            if s.engine != "eager":
                self.detail = "compiling the decode step"
            status = await asyncio.to_thread(prepare_engine, engine, s)
            self.metrics.kv_cache_bytes.set(engine.runner.cache_bytes)
            self.metrics.set_engine(status)
            self.metrics.set_backend("native", {})
            if status.reason and s.engine != "eager":
                log.warning("engine: %s (%s)", status.mode, status.reason)
            self.detail = "loading catalog"
            self.catalog = await asyncio.to_thread(self._open_catalog, engine.model_info(), engine.coders)
            if s.warmup:
                self.detail = f"warming up (batch {s.max_batch})"
                await asyncio.to_thread(warm_up, engine, s)
            native.start(SchedulerLimits(s.max_batch, s.max_queue, s.max_configs_per_batch))
            self.service = Service.over(native, self.catalog, s, self.metrics, self.started)
        except Exception as exc:
            self._failed(exc)
            return
        self._ready(engine.name)

    async def _load_vllm(self) -> None:
        """The vLLM engine (`server.engine.vllm`): started, probed (fail closed), then the catalog."""
        from server.engine.vllm.engine import VllmEngine

        s = self.settings
        try:
            self.detail = "starting vLLM"
            engine = await VllmEngine.create(vllm_options(s), self.metrics)
            engine.on_dead = self._engine_died
            self.engine = engine
            self.metrics.set_backend("vllm", engine.options.parallel)
            self.detail = "loading catalog"
            self.catalog = await asyncio.to_thread(self._open_catalog, engine.model_info(), engine.coders)
            self.service = Service.over(engine, self.catalog, s, self.metrics, self.started)
        except Exception as exc:
            self._failed(exc)
            return
        self._ready(engine.name)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, OSError | SteerError | CacheTooLarge | CompileFailed):
            # expected failures (a hub model offline, a missing folder, a bad SAE, a failed probe): one clear line
            log.error("startup failed: %s", exc)
        else:
            log.exception("startup failed")
        self.status, self.detail = "failed", f"startup failed: {type(exc).__name__}: {exc}"
        if self.on_fatal is not None:
            self.on_fatal(self.detail)

    def _engine_died(self, reason: str) -> None:
        """The engine stopped for good while serving (vLLM's engine core died): not ready, and exit non-zero so
        that the orchestrator restarts the server, rather than a live process that answers nothing."""
        self.status, self.detail = "failed", f"engine failed: {reason}"
        if self.on_fatal is not None:
            self.on_fatal(self.detail)

    def _ready(self, name: str) -> None:
        self.status, self.detail = "ready", None
        log.info("ready: %s, %d vectors", name, len(self.catalog.vectors()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._poll_catalog()))

    def _open_catalog(self, model_info: Any, coders: Any) -> Any:
        from vectors.catalog import Catalog

        root = Path(self.settings.vectors)
        if not root.is_dir():
            log.warning("catalog folder %s does not exist (yet); it will be picked up when created", root)
        catalog = Catalog(root, model_info, coders)
        self._refresh(catalog)
        return catalog

    def _refresh(self, catalog: Any) -> bool:
        changed = bool(catalog.refresh())
        if changed:
            for path, reason in sorted(catalog.skipped.items()):
                log.warning("catalog: skipped %s: %s", path, reason)
            log.info("catalog: %d vectors, %d skipped", len(catalog.vectors()), len(catalog.skipped))
        self.metrics.vectors_loaded.set(len(catalog.vectors()))
        self.metrics.vectors_skipped.set(len(catalog.skipped))
        return changed

    async def _poll_catalog(self) -> None:
        """Hot reload: rescan off the event loop; requests keep the vectors they resolved at admission."""
        while True:
            await asyncio.sleep(self.settings.catalog_poll_s)
            try:
                await asyncio.to_thread(self._refresh, self.catalog)
            except Exception:
                log.exception("catalog refresh failed (keeping the previous catalog)")

    # --- shutdown -----------------------------------------------------------------------------------------
    async def drain(self) -> bool:
        """Stop admitting (503) and wait for in-flight requests up to the drain timeout."""
        if self.status == "ready":
            self.status, self.detail = "draining", "shutting down"
        if self.engine is None:
            return True
        ok = await self.engine.drain(self.settings.drain_timeout_s)
        if not ok:
            log.warning("drain timeout: %d requests still in flight", self.engine.load().in_flight)
        return ok

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.engine is not None:
            await asyncio.to_thread(self.engine.shutdown)
