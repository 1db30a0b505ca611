"""Pieces every endpoint family's protocol shares: the strict model bases, text and number types, errors,
usage, applied steering and chat messages.

Requests forbid unknown fields: a typo such as `"stength": 8` must be a 422, never a silently unsteered request.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
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


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(ResponseModel):
    """The one error schema of every route (OpenAI-shaped)."""

    error: ErrorInfo


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: Text


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
