"""The protocol of `POST /v1/chat/completions`: a chat answered `n` times, token log-probs, chunks."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from server.protocol.common import AppliedVector, ChatMessage, LenientModel, ResponseModel, Usage, unsupported
from server.protocol.openai import OpenAIBase, OpenAIMessage, completion_id


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
    id: str = Field(default_factory=lambda: completion_id("chatcmpl"))
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
