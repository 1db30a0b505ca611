"""What the OpenAI-compatible endpoints share: the request fields common to /v1/completions and
/v1/chat/completions (`OpenAIBase`), chat messages as OpenAI clients send them, response ids. The endpoints' own
models are `completions`, `chat` and `models`.

Requests forbid unknown fields: a typo such as `"stength": 8` must be a 422, never a silently unsteered request.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from server.protocol.common import (
    ApplyPhase,
    ChatMessage,
    LenientModel,
    Strength,
    StrictModel,
    Text,
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


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
