"""Start-up steps of a server, outside any event loop: the engine's configuration from the settings, its slots
reserved and decode step compiled (`prepare_engine`, also `steer serve --compile-only`), and one warm-up
generation."""

from __future__ import annotations

from typing import Any

from server.engine.compiled_step import EngineStatus, set_compile_cache
from server.engine.host import configure_threads
from server.engine.model import EngineConfig, LoadedModel
from server.engine.request import Row, SteerSpec
from server.engine.sampling import SamplingParams
from server.settings import ServerSettings


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


def vllm_options(settings: ServerSettings) -> Any:
    """`server.engine.vllm.engine.VllmOptions` of the settings (`STEER_BACKEND=vllm`, `STEER_VLLM_*`)."""
    from server.engine.vllm.engine import VllmOptions

    s = settings
    return VllmOptions(
        model=s.model,
        vectors=s.vectors,
        sae=tuple(s.sae),
        name=s.served_name,
        dtype=s.dtype,
        max_model_len=s.vllm_max_model_len or s.max_context,
        max_num_seqs=s.max_batch,
        max_queue=s.max_queue,
        max_neg=s.vllm_max_neg_features,
        tensor_parallel_size=s.vllm_tensor_parallel_size,
        pipeline_parallel_size=s.vllm_pipeline_parallel_size,
        distributed_executor=s.vllm_distributed_executor,
        gpu_memory_utilization=s.vllm_gpu_memory_utilization,
        enable_prefix_caching=s.vllm_enable_prefix_caching,
        enforce_eager=s.vllm_enforce_eager,
    )
