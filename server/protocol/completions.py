"""The protocol of `POST /v1/completions`: raw continuation of text or token ids, legacy log-probs, chunks."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from server.protocol.common import AppliedVector, ResponseModel, Text, Usage, unsupported
from server.protocol.openai import OpenAIBase, TokenId, completion_id


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
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        ids = [t for t in prompt if isinstance(t, int)]
        if len(ids) == len(prompt):  # one prompt of token ids
            return [ids]
        texts = [t for t in prompt if isinstance(t, str)]
        if len(texts) == len(prompt):
            return texts
        return [list(t) for t in prompt if isinstance(t, list)]


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
    id: str = Field(default_factory=lambda: completion_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
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
