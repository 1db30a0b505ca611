"""Pydantic models of every request and response body (the HTTP boundary, nothing else).

Requests forbid unknown fields: a typo such as `"stength": 8` must be a 422, never a silently unsteered request.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

ApplyPhase = Literal["prompt", "generation", "both"]
FinishReason = Literal["stop", "length", "cancelled"]
Strength = Annotated[float, Field(allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


def _utf8(value: str) -> str:
    """JSON can carry lone surrogates (`"\\ud800"`) that no tokenizer accepts: refuse them here (422)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode (lone surrogate at index {exc.start})") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]


class StrictModel(BaseModel):
    """Request model base: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(BaseModel):
    """Response model base."""

    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------------------


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(ResponseModel):
    """The one error schema of every route (OpenAI-shaped)."""

    error: ErrorInfo


# --- /generate ----------------------------------------------------------------------------------------


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: Text


class GenerateRequest(StrictModel):
    """`POST /generate`: one prompt (or chat), steered by any number of named vectors."""

    prompt: Text | None = Field(default=None, description="Plain text prompt (give this or `messages`).")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, description="Chat; the model's chat template is applied server-side."
    )
    steer: dict[str, Strength] = Field(
        default_factory=dict,
        description="Vector name (catalog name, `sae:<feature>` or `sae:<layer>:<feature>`) → strength.",
    )
    apply: ApplyPhase | None = Field(default=None, description="Override every vector's own apply phase.")
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0, description="0 = no top-k filter.")
    seed: Seed | None = None
    stop: Text | list[Text] | None = None
    stream: bool = False
    compare: bool = Field(default=False, description="Also generate the unsteered text, side by side.")

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AppliedVector(ResponseModel):
    """What one entry of `steer` did: the strength actually used, and whether it was clamped."""

    name: str
    strength: float
    requested_strength: float
    clamped: bool
    layer: int
    method: str
    space: str
    apply: ApplyPhase


class GenerateResponse(ResponseModel):
    text: str
    finish_reason: FinishReason
    usage: Usage
    steer: list[AppliedVector]
    unsteered_text: str | None = None
    unsteered_finish_reason: FinishReason | None = None
    model: str


class StreamToken(ResponseModel):
    """One SSE `token` event: the next chunk of text (`unsteered_token`: of the unsteered twin, with `compare`)."""

    text: str


class StreamDone(ResponseModel):
    """The final SSE `done` event."""

    finish_reason: FinishReason
    usage: Usage
    steer: list[AppliedVector]
    unsteered_text: str | None = None


# --- catalog ------------------------------------------------------------------------------------------


class VectorSummary(ResponseModel):
    name: str
    method: str
    space: str
    layer: int
    default_strength: float
    strength_range: tuple[float, float]
    apply: str
    eval: dict[str, Any] = Field(default_factory=dict, description="Headline evaluation numbers.")
    created: str | None = None
    nnz: int


class SkippedFile(ResponseModel):
    path: str
    reason: str


class CatalogResponse(ResponseModel):
    vectors: list[VectorSummary]
    skipped: list[SkippedFile]
    adhoc: str = Field(description="How to steer on one SAE feature without a catalog entry.")


class FeatureValue(ResponseModel):
    index: int
    value: float


class VectorDetail(ResponseModel):
    name: str
    summary: VectorSummary
    metadata: dict[str, Any]
    top_features: list[FeatureValue] = Field(description="Largest |value| SAE features (SAE-space vectors).")


# --- health -------------------------------------------------------------------------------------------


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


class ReadyResponse(ResponseModel):
    status: Literal["ready", "loading", "draining", "failed"]
    detail: str | None = None
    model: str | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    queue_depth: int = 0
    running: int = 0
    engine: EngineInfo | None = None


# --- OpenAI-compatible ----------------------------------------------------------------------------------


class StreamOptions(StrictModel):
    include_usage: bool = False


class OpenAIBase(StrictModel):
    """Fields common to /v1/completions and /v1/chat/completions; `steer` and `apply` are our extras."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(
        default=1,
        ge=1,
        description="Choices per prompt, each an independent generation; with `seed`, choice i samples with "
        "seed + i. At most `max_choices_per_request` choices (prompts × n) per request.",
    )
    seed: Seed | None = None
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    steer: dict[str, Strength] = Field(default_factory=dict)
    apply: ApplyPhase | None = None


def _is_token_ids(value: object) -> bool:
    """`[1, 2]` or `[[1, 2], [3]]`: OpenAI's token-id prompts."""
    if not isinstance(value, list):
        return False
    return any((isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, list) for v in value)


class CompletionRequest(OpenAIBase):
    prompt: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="One prompt or a list of prompts; each prompt gets `n` choices (prompt-major order)."
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        # Token ids would bypass the prompt formatting every vector was trained with (and must be range-checked
        # against the vocabulary before they reach an embedding): refused, by name.
        if _is_token_ids(value):
            raise ValueError("token-id prompts are not supported; send text (a string or a list of strings)")
        return value

    @property
    def prompts(self) -> list[str]:
        """The prompts in order (a single string is a list of one)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatCompletionRequest(OpenAIBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class CompletionChoice(ResponseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(ResponseModel):
    id: str = Field(default_factory=lambda: _completion_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    steer: list[AppliedVector] | None = None


class ChatMessageOut(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(ResponseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(ResponseModel):
    id: str = Field(default_factory=lambda: _completion_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    steer: list[AppliedVector]


class ChatDelta(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(ResponseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    steer: list[AppliedVector] | None = None


class CompletionChunk(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    steer: list[AppliedVector] | None = None


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sparse-steer"


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
