"""The protocol of the tokenizer endpoints: /tokenize, /detokenize, /tokenizer_info.

Requests forbid unknown fields: a typo such as `"stength": 8` must be a 422, never a silently unsteered request.
"""

from __future__ import annotations

from pydantic import (
    Field,
    model_validator,
)

from server.protocol.common import LenientModel, ResponseModel, Text, unsupported
from server.protocol.openai import OpenAIMessage, TokenId


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
