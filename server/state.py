"""The server's runtime state: load once (model, SAEs, catalog), warm up, poll the catalog, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from server.engine.compiled_step import CompileFailed, EngineStatus, set_compile_cache
from server.engine.host import configure_threads
from server.engine.model import EngineConfig, LoadedModel
from server.engine.native import NativeEngine
from server.engine.request import Row, SteerSpec
from server.engine.runner import CacheTooLarge
from server.engine.sampling import SamplingParams
from server.engine.scheduler import SchedulerLimits
from server.metrics import Metrics
from server.serving import Service
from server.settings import ServerSettings
from vectors.errors import SteerError

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "draining", "failed"]


def engine_config(settings: ServerSettings) -> EngineConfig:
    return EngineConfig(
        model=settings.model,
        sae=tuple(settings.sae),
        device=settings.device,
        dtype=settings.dtype,
        max_context=settings.max_context,
        model_name=settings.served_name,
        max_batch=settings.max_batch,
        max_neg_features=settings.max_neg_features,
    )


@dataclass
class ServerState:
    """Everything a route may need; `service` is None until loading succeeded."""

    settings: ServerSettings
    metrics: Metrics = field(default_factory=Metrics)
    status: Status = "loading"
    detail: str | None = "loading model"
    engine: NativeEngine | None = None  # set once the model is loaded; admits requests once ready
    catalog: Any = None
    service: Service | None = None
    started: float = field(default_factory=time.time)
    on_fatal: Callable[[str], None] | None = None  # set by `steer serve`: exit non-zero
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    # --- startup ------------------------------------------------------------------------------------------
    def start(self, engine: LoadedModel | None = None) -> None:
        """Begin loading in the background (so /health answers at once and /ready says "loading")."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._load(engine)))

    async def _load(self, engine: LoadedModel | None) -> None:
        s = self.settings
        try:
            if engine is None:  # a process of its own (a given engine keeps its caller's threads)
                configure_threads(s.threads)
                engine = await asyncio.to_thread(LoadedModel.load, engine_config(s))
            engine.name = s.served_name
            self.engine = NativeEngine(engine, self.metrics)
            if s.engine != "eager":
                self.detail = "compiling the decode step"
            status = await asyncio.to_thread(prepare_engine, engine, s)
            self.metrics.kv_cache_bytes.set(engine.runner.cache_bytes)
            self.metrics.set_engine(status)
            if status.reason and s.engine != "eager":
                log.warning("engine: %s (%s)", status.mode, status.reason)
            self.detail = "loading catalog"
            self.catalog = await asyncio.to_thread(self._open_catalog, engine)
            if s.warmup:
                self.detail = f"warming up (batch {s.max_batch})"
                await asyncio.to_thread(warm_up, engine, s)
            self.engine.start(SchedulerLimits(s.max_batch, s.max_queue, s.max_configs_per_batch))
            self.service = Service.over(self.engine, self.catalog, s, self.metrics)
        except Exception as exc:
            if isinstance(exc, OSError | SteerError | CacheTooLarge | CompileFailed):
                # expected failures (a hub model offline, a missing folder, a bad SAE): one clear line
                log.error("startup failed: %s", exc)
            else:
                log.exception("startup failed")
            self.status, self.detail = "failed", f"startup failed: {type(exc).__name__}: {exc}"
            if self.on_fatal is not None:
                self.on_fatal(self.detail)
            return
        self.status, self.detail = "ready", None
        log.info("ready: %s, %d vectors", engine.name, len(self.catalog.vectors()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._poll_catalog()))

    def _open_catalog(self, engine: LoadedModel) -> Any:
        from vectors.catalog import Catalog

        root = Path(self.settings.vectors)
        if not root.is_dir():
            log.warning("catalog folder %s does not exist (yet); it will be picked up when created", root)
        catalog = Catalog(root, engine.model_info(), engine.coders)
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


def prepare_engine(engine: LoadedModel, s: ServerSettings) -> EngineStatus:
    """Reserve the KV cache and steering slots for the settings' batch, then compile (and verify) the decode
    step into the settings' inductor cache: what start-up and `steer serve --compile-only` do."""
    engine.reserve(s.max_batch, s.max_neg_features)
    if s.engine != "eager":
        set_compile_cache(s.compile_cache_dir)
    return engine.compile(s.engine, s.compile_backend, s.compile_buckets or None)


def compile_only(s: ServerSettings) -> EngineStatus:
    """Load the model and SAE of the settings and compile the decode step, nothing else: fills the inductor
    cache so that a later start-up with the same settings (and shapes) compiles in seconds."""
    configure_threads(s.threads)
    engine = LoadedModel.load(engine_config(s))
    try:
        return prepare_engine(engine, s)
    finally:
        engine.close()


def warm_up(engine: LoadedModel, settings: ServerSettings) -> None:
    """One generation at the largest batch, half the rows steered (exercises every code path once)."""
    ids = engine.encode(prompt="Hello")
    budget = max(1, min(settings.warmup_tokens, engine.context_length - len(ids)))
    params = SamplingParams(max_new_tokens=budget)
    steer = SteerSpec(((engine.adhoc_vector(0), 1.0),)) if engine.coders else SteerSpec()
    seqs = [Row(ids, params, steer if i % 2 else SteerSpec()) for i in range(settings.max_batch)]
    try:
        engine.generate(seqs)
    except Exception as exc:
        raise RuntimeError(
            f"warm-up at max_batch={settings.max_batch} failed ({type(exc).__name__}: {exc}); "
            "lower STEER_MAX_BATCH or STEER_MAX_NEW_TOKENS"
        ) from exc
