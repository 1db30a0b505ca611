"""Pydantic models of every request and response body (the HTTP boundary, nothing else).

Requests forbid unknown fields: a typo such as `"stength": 8` must be a 422, never a silently unsteered request.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

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

# OpenAI seeds are any 64-bit integer, signed or not (reduced modulo 2**64 before use).
Seed64 = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
TokenId = Annotated[int, Field(ge=0, strict=True)]


class LenientModel(StrictModel):
    """OpenAI request bodies: `null` for any optional field means its default (clients send them); unknown
    fields are still errors."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


def unsupported(field: str, what: str) -> ValueError:
    return ValueError(
        f"{what} is not supported by this server (leave `{field}` out, or send its neutral value)"
    )


class StreamOptions(LenientModel):
    include_usage: bool = False
    include_obfuscation: bool = Field(
        default=True, description="Accepted; this server never pads chunks (nothing to obfuscate against)."
    )


class OpenAIBase(LenientModel):
    """Fields common to /v1/completions and /v1/chat/completions; `steer`, `apply` and `top_k` are our extras.

    `model` is the base model id or a steered model id (`<base>:<vector>[@<strength>][+...]`, see /v1/models).
    Neutral values of features this server lacks are accepted (penalties 0, `logit_bias` {}); any other value is
    a 422 naming the field.
    """

    model: str
    max_tokens: int | None = Field(default=None, ge=0, description="0 only with `echo` (scoring).")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(
        default=1,
        ge=1,
        description="Choices per prompt, each an independent generation; with `seed`, choice i samples with "
        "seed + i. At most `max_choices_per_request` choices (prompts × n) per request.",
    )
    seed: Seed64 | None = None
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = Field(default=0.0, description="Only 0 (no penalty) is supported.")
    presence_penalty: float = Field(default=0.0, description="Only 0 (no penalty) is supported.")
    logit_bias: dict[str, float] = Field(default_factory=dict, description="Only {} is supported.")
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    steer: dict[str, Strength] = Field(default_factory=dict)
    apply: ApplyPhase | None = None

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float, info: ValidationInfo) -> float:
        if value != 0:
            raise unsupported(str(info.field_name), f"a {info.field_name} other than 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float]) -> dict[str, float]:
        if value:
            raise unsupported("logit_bias", "logit_bias")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _prompt_kind(value: object) -> object:
    """A string, a list of strings, a list of token ids or a list of such lists; anything else by name."""
    if isinstance(value, str):
        return value
    ok = isinstance(value, list) and (
        all(isinstance(v, str) for v in value)
        or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or all(
            isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
            for v in value
        )
    )
    if not ok:
        raise ValueError(
            "must be a string, a list of strings, a list of token ids, or a list of token-id lists"
        )
    assert isinstance(value, list)
    if not value:
        raise ValueError("must hold at least one prompt")
    rows = value if isinstance(value[0], list) else [value] if isinstance(value[0], int) else []
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"token-id prompt {i} is empty")
        if min(row) < 0:
            raise ValueError(f"token-id prompt {i} has a negative id ({min(row)})")
    return value


class CompletionRequest(OpenAIBase):
    """`POST /v1/completions`: raw continuation of text (no chat template) or of token ids (used verbatim)."""

    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(
        description="One prompt or a list of prompts; each prompt gets `n` choices (prompt-major order)."
    )
    echo: bool = Field(default=False, description="Prepend the prompt to each choice (its log-probs too).")
    logprobs: int | None = Field(
        default=None, ge=0, description="Top alternatives per token (0 or false: none, no log-probs)."
    )
    best_of: int | None = Field(default=None, description="Only 1 (or equal to n) is supported.")
    suffix: str | None = Field(default=None, description="Only empty is supported.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: object) -> object:
        return _prompt_kind(value)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _false_is_none(cls, value: object) -> object:
        if value is False or value == 0:
            return None
        if value is True:
            raise ValueError("give the number of top alternatives per token (an integer), not true")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise unsupported("suffix", "suffix (insertion)")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value not in (1, info.data.get("n", 1)):
            raise unsupported("best_of", f"best_of {value} (candidates ranked server-side)")
        return value

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts in order (a single string or token-id list is a list of one)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class TextPart(StrictModel):
    type: Literal["text"]
    text: Text


class OpenAIMessage(LenientModel):
    """A chat message as OpenAI clients send it: `developer` is a system turn, content may be text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: str | None = Field(default=None, description="Accepted and not shown to the model.")

    def as_chat(self) -> ChatMessage:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=content)


class ResponseFormat(LenientModel):
    type: str
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ResponseFormat:
        if self.type != "text":
            raise unsupported("response_format", f"response_format {self.type!r}")
        return self


class ChatCompletionRequest(OpenAIBase):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = Field(default=False, description="Log-probs of each generated token.")
    top_logprobs: int = Field(
        default=0, ge=0, description="Top alternatives per token (needs logprobs true)."
    )
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise unsupported("tools", "tool calling")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: object) -> object:
        if value not in (None, "none", "auto"):
            raise unsupported("tool_choice", f"tool_choice {value!r}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int, info: ValidationInfo) -> int:
        if value and not info.data.get("logprobs"):
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        return value

    @property
    def chat(self) -> list[ChatMessage]:
        return [m.as_chat() for m in self.messages]


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class CompletionLogprobs(ResponseModel):
    """The legacy completions log-prob object (what lm-evaluation-harness reads)."""

    tokens: list[str]
    token_logprobs: list[float | None] = Field(
        description="None for the first prompt token (nothing before)."
    )
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(
        description="Where each token's text starts in `text` (special tokens: empty)."
    )


class CompletionChoice(ResponseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


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


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


class ChatChoice(ResponseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


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


class ModelSteering(ResponseModel):
    """What a steered model id applies: one catalog vector at its default strength."""

    vector: str
    strength: float
    strength_range: tuple[float, float]
    method: str
    space: str
    layer: int
    apply: str


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sparse-steer"
    root: str = Field(description="The base model id.")
    parent: str | None = Field(default=None, description="The base id, for a steered model id.")
    max_model_len: int
    steer: ModelSteering | None = None


class TokenizeRequest(LenientModel):
    """`POST /tokenize` (vLLM's shape): a text, encoded as /v1/completions encodes it, or a chat, as
    /v1/chat/completions formats it."""

    model: str | None = None
    prompt: Text | None = None
    messages: list[OpenAIMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = Field(default=True, description="Text only: the tokenizer's usual BOS.")
    add_generation_prompt: bool = Field(
        default=True, description="Chat only: must be true (the chat route's)."
    )
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.messages is not None and not self.add_generation_prompt:
            raise unsupported("add_generation_prompt", "a chat without the generation prompt")
        return self


class TokenizeResponse(ResponseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(LenientModel):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(ResponseModel):
    prompt: str


class TokenizerInfo(ResponseModel):
    """`GET /tokenizer_info`: enough for a client to tokenize through this server (lm-eval's remote backend)."""

    tokenizer_class: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    chat_template: str | None
    model_max_length: int
    vocab_size: int


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
