"""Prometheus metrics of one server (its own registry, so several apps can live in one test process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FAILURE_REASONS = ("error", "oom", "overloaded", "timeout", "cancelled")
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Every metric the server exports; names follow vLLM/TGI conventions with a `steer_` prefix."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. (Linux): what load/soak tests watch
        self.requests = Counter(
            "steer_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.failures = Counter(
            "steer_request_failures", "Failed generations by reason", ["reason"], registry=r
        )
        for reason in FAILURE_REASONS:  # export zeros, so rates work before the first failure
            self.failures.labels(reason=reason)
        self.step_failures = Counter(
            "steer_decode_step_failures",
            "Decode steps that raised (their rows are retried one by one)",
            registry=r,
        )
        self.rescued = Counter(
            "steer_rows_rescued", "Rows that went on after a failed decode step", registry=r
        )
        self.disconnects = Counter("steer_client_disconnects", "Clients gone before the end", registry=r)
        self.prompt_tokens = Counter(
            "steer_prompt_tokens",
            "Prompt tokens prefilled (every row: compare and n choices prefill their own)",
            registry=r,
        )
        self.generation_tokens = Counter("steer_generation_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("steer_num_requests_waiting", "Requests waiting for a batch row", registry=r)
        self.running = Gauge("steer_num_rows_running", "Rows in the decode batch", registry=r)
        self.batch_size = Histogram(
            "steer_batch_size", "Rows per decode step", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.batch_configs = Histogram(
            "steer_batch_steering_configs",
            "Distinct steering configs per decode step",
            buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32),
            registry=r,
        )
        self.ttft = Histogram(
            "steer_time_to_first_token_seconds", "Submission to first token", buckets=_LATENCY, registry=r
        )
        self.tpot = Histogram(
            "steer_time_per_output_token_seconds",
            "Mean time per token after the first",
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.e2e = Histogram(
            "steer_e2e_request_latency_seconds", "Submission to end", buckets=_LATENCY, registry=r
        )
        self.queue_time = Histogram(
            "steer_request_queue_time_seconds", "Submission to admission", buckets=_LATENCY, registry=r
        )
        self.kv_cache_bytes = Gauge(
            "steer_kv_cache_bytes", "KV cache reserved at start-up (all slots, all layers)", registry=r
        )
        self.engine_compiled = Gauge(
            "steer_engine_compiled",
            "1 when decode steps of this batch-size bucket run compiled (verified against eager), 0 when eager",
            ["bucket"],
            registry=r,
        )
        self.engine_info = Gauge(
            "steer_engine_info",
            "1, labelled with the engine (native or vllm) and its parallel layout",
            ["backend", "tensor_parallel_size", "pipeline_parallel_size", "executor"],
            registry=r,
        )
        self.vectors_loaded = Gauge("steer_vectors_loaded", "Vectors in the catalog", registry=r)
        self.vectors_skipped = Gauge("steer_vector_files_skipped", "Catalog files skipped", registry=r)

    def set_engine(self, status: Any) -> None:
        """Which decode path each bucket takes (`server.engine.compiled_step.EngineStatus`)."""
        for bucket, how in status.buckets.items():
            self.engine_compiled.labels(bucket=str(bucket)).set(1 if how == "compiled" else 0)

    def set_backend(self, backend: str, parallel: Any) -> None:
        """Which engine serves, and its parallel layout (`EngineDescription.backend` / `.parallel`)."""
        self.engine_info.labels(
            backend=backend,
            tensor_parallel_size=str(parallel.get("tensor_parallel_size", 1)),
            pipeline_parallel_size=str(parallel.get("pipeline_parallel_size", 1)),
            executor=str(parallel.get("distributed_executor", "none")),
        ).set(1)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
