"""Server settings: every option of `steer serve`, also readable from `STEER_*` environment variables.

Every limit the server enforces is named here once, with its default; `GET /ready` and the 4xx messages
quote them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.model_ids import base_id_from, check_base_id

DType = Literal["auto", "float32", "float16", "bfloat16"]
StrengthPolicy = Literal["reject", "clamp"]

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: requests carry text, never tensors
WORLD_SUMMARY = "world.json"  # written by `steer demo build` beside the world's model folder
WORLD_NAME = "culture-world"


class ServerSettings(BaseSettings):
    """Configuration of one server process (CLI flags override `STEER_*` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="STEER_", extra="forbid", validate_default=True)

    # What to serve.
    model: str = Field(description="Hugging Face model folder (or hub id when online).")
    sae: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="SAE source(s): sae-lens folder or release/id; comma-separated."
    )
    vectors: str = Field(description="Catalog root: a folder of <namespace>/<name>.safetensors files.")
    model_name: str | None = Field(
        default=None,
        description="Base model id in /v1/models (default: `culture-world` for a culture-world folder, else the "
        "folder name); no `,` `=` `:` `@` `+` or spaces. The `--model` value as given is accepted as an alias.",
    )

    # Where and how.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, mps.")
    dtype: DType = "auto"
    api_key: SecretStr | None = Field(default=None, description="When set, every route but /health needs it.")

    # Limits.
    max_new_tokens: int = Field(default=512, ge=1, description="Cap on max_new_tokens / max_tokens.")
    default_max_new_tokens: int = Field(default=128, ge=1, description="Used when a request gives none.")
    max_context: int | None = Field(
        default=None, ge=2, description="Prompt + generation cap (default: model's)."
    )
    max_batch: int = Field(default=8, ge=1, description="Rows decoded together (a compare request uses 2).")
    max_queue: int = Field(default=64, ge=0, description="Requests waiting for a batch row; more → 429.")
    max_configs_per_batch: int = Field(default=4, ge=1, description="Distinct steering configs per batch.")
    max_vectors_per_request: int = Field(default=8, ge=1)
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads of the serving process (default: the CPUs it may run on, its "
        "affinity mask); inter-op threads are 1. See server/engine/host.py.",
    )
    max_neg_features: int = Field(
        default=256,
        ge=0,
        description="Negative SAE features per layer a row's steering keeps in its slot's gathered buffers (and "
        "in the compiled step); a row with more takes the exact full SAE encode, in eager steps.",
    )
    max_choices_per_request: int = Field(
        default=8, ge=1, description="OpenAI routes: prompts × n per request (each choice is a batch row)."
    )
    max_stop_sequences: int = Field(default=4, ge=0)
    max_top_logprobs: int = Field(
        default=20, ge=0, description="Top alternatives per token (`logprobs` / `top_logprobs`)."
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="Request line + headers cap.")
    strength_policy: StrengthPolicy = Field(
        default="reject", description="A strength outside a vector's strength_range: 422 or clamp."
    )
    adhoc_strength_limit: float = Field(default=100.0, gt=0, description="|strength| cap for sae:<feature>.")
    request_timeout_s: float = Field(
        default=120.0,
        ge=0,
        description="Submission to last token; past it the request is stopped and answered 504 (0 = no limit).",
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with 429 and 503.")

    # The decode step.
    engine: Literal["auto", "compiled", "eager"] = Field(
        default="auto",
        description="auto: compiled (CUDA graphs on GPU) for every batch-size bucket that passes the start-up "
        "self-check against eager, eager for the others; compiled: the same, but a failing bucket stops the "
        "start-up; eager: never compile.",
    )
    compile_cache_dir: str | None = Field(
        default=None,
        description="inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR): a writable folder where files may be "
        "executed; a warm cache makes restarts compile in seconds.",
    )
    compile_buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Batch sizes to compile a decode graph for, comma-separated (default 1, 2, 4, … max_batch); "
        "a step of n rows runs in the smallest bucket ≥ n, eagerly above the largest. Fewer buckets start faster.",
    )
    compile_backend: str = Field(
        default="inductor", description="torch.compile backend (tests use aot_eager for traceability)."
    )

    # The engine: ours, or vLLM (`pip install sparse-steer[vllm]`; docs/deploy.md).
    backend: Literal["native", "vllm"] = Field(
        default="native",
        description="native: this package's engine; vllm: vLLM's engine with steering inside its model "
        "(paged KV, prefix caching, tensor / pipeline parallel, multi-node with Ray).",
    )
    vllm_tensor_parallel_size: int = Field(default=1, ge=1, description="vllm: GPUs per pipeline stage.")
    vllm_pipeline_parallel_size: int = Field(default=1, ge=1, description="vllm: pipeline stages.")
    vllm_distributed_executor: Literal["mp", "ray"] | None = Field(
        default=None, description="vllm: workers as local processes (mp) or a Ray cluster (several nodes)."
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vllm: share of each GPU's memory vLLM may take."
    )
    vllm_max_model_len: int | None = Field(
        default=None, ge=2, description="vllm: context length (default: max_context, else the model's)."
    )
    vllm_enable_prefix_caching: bool = Field(
        default=True, description="vllm: reuse KV blocks of equal prompts (never across steering configs)."
    )
    vllm_max_neg_features: int = Field(
        default=64,
        ge=0,
        description="vllm: negative SAE features per layer a config may have (more: 422); the token-wise "
        "gather costs memory ∝ tokens per forward × d_model × this.",
    )
    vllm_enforce_eager: bool = Field(default=False, description="vllm: no torch.compile / CUDA graphs.")

    # Lifecycle.
    catalog_poll_s: float = Field(default=1.0, gt=0, description="Catalog rescan interval (hot reload).")
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="SIGTERM: time given to in-flight requests."
    )
    warmup: bool = True
    warmup_tokens: int = Field(default=4, ge=1)

    @field_validator("model_name")
    @classmethod
    def _usable_id(cls, value: str | None) -> str | None:
        return None if value is None else check_base_id(value)

    @property
    def served_name(self) -> str:
        """The base model id of /v1 (steered ids are `<served_name>:<vector>`)."""
        if self.model_name:
            return self.model_name
        folder = Path(self.model.rstrip("/"))
        if (folder.parent / WORLD_SUMMARY).is_file():  # a culture world: <world>/model beside world.json
            return WORLD_NAME
        return base_id_from(folder.name or self.model)

    @field_validator("sae", "compile_buckets", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("compile_buckets")
    @classmethod
    def _check_buckets(cls, value: list[int]) -> list[int]:
        if any(b < 1 for b in value):
            raise ValueError("compile buckets must be positive batch sizes")
        return sorted(set(value))

    def public_limits(self) -> dict[str, object]:
        """The limits a client may want to know (no paths, no secrets)."""
        return {
            "max_new_tokens": self.max_new_tokens,
            # what a request without a length gets
            "default_max_new_tokens": min(self.default_max_new_tokens, self.max_new_tokens),
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "max_configs_per_batch": self.max_configs_per_batch,
            "max_vectors_per_request": self.max_vectors_per_request,
            "max_choices_per_request": self.max_choices_per_request,
            "max_stop_sequences": self.max_stop_sequences,
            "max_top_logprobs": self.max_top_logprobs,
            "max_body_bytes": self.max_body_bytes,
            "strength_policy": self.strength_policy,
            "request_timeout_s": self.request_timeout_s,
        }
