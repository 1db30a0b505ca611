"""The protocol of the OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models.

Requests forbid unknown fields: a typo such as `"stength": 8` must be a 422, never a silently unsteered request.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from server.protocol.common import (
    AppliedVector,
    ApplyPhase,
    ChatMessage,
    LenientModel,
    ResponseModel,
    Strength,
    StrictModel,
    Text,
    Usage,
    unsupported,
)

# OpenAI seeds are any 64-bit integer, signed or not (reduced modulo 2**64 before use).
Seed64 = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


TokenId = Annotated[int, Field(ge=0, strict=True)]


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
    ignore_eos: bool = Field(
        default=False,
        description="Generate past end-of-sequence tokens up to max_tokens (as vLLM does; load tools use it).",
    )

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


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
