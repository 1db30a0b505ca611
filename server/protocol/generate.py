"""The protocol of the native endpoint `POST /generate` (JSON and server-sent events).

Requests forbid unknown fields: a typo such as `"stength": 8` must be a 422, never a silently unsteered request.
"""

from __future__ import annotations

from pydantic import (
    Field,
    model_validator,
)

from server.protocol.common import (
    AppliedVector,
    ApplyPhase,
    ChatMessage,
    FinishReason,
    ResponseModel,
    Seed,
    Strength,
    StrictModel,
    Text,
    Usage,
)


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
    ignore_eos: bool = Field(
        default=False, description="Generate past end-of-sequence tokens up to max_new_tokens (load tests)."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self


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
