"""Serving of vLLM's tokenizer routes: `/tokenize`, `/detokenize`, `/tokenizer_info`.

`/tokenize` encodes text exactly as /v1/completions does (raw, the tokenizer's usual special tokens) and a chat
exactly as /v1/chat/completions formats it; `/detokenize` keeps special tokens (as vLLM does).
"""

from __future__ import annotations

from server.engine.client import EngineClient
from server.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from server.serving.requests import RequestBuilder
from server.serving.steering import SteeringResolver


class TokenizerServing:
    """The engine's tokenizer behind the three routes; a `model` given must be one this server answers to."""

    def __init__(self, engine: EngineClient, steering: SteeringResolver, requests: RequestBuilder) -> None:
        self.engine = engine
        self.steering = steering
        self.requests = requests

    def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        self._check_model(body.model)
        ids = self.requests.tokenize(
            prompt=body.prompt,
            messages=[m.as_chat() for m in body.messages] if body.messages is not None else None,
            add_special_tokens=body.add_special_tokens,
        )
        strs = list(self.engine.tokenizer.convert_ids_to_tokens(ids)) if body.return_token_strs else None
        return TokenizeResponse(
            count=len(ids), max_model_len=self.engine.context_length, tokens=ids, token_strs=strs
        )

    def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        self._check_model(body.model)
        ids = self.requests.checked_ids(body.tokens, "tokens")
        return DetokenizeResponse(prompt=str(self.engine.tokenizer.decode(ids)))

    def info(self) -> TokenizerInfo:
        tok = self.engine.tokenizer
        template = getattr(tok, "chat_template", None)
        return TokenizerInfo(
            tokenizer_class=type(tok).__name__,
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
            pad_token=tok.pad_token,
            unk_token=tok.unk_token,
            chat_template=template if isinstance(template, str) else None,
            model_max_length=self.engine.context_length,
            vocab_size=self.engine.vocab_size,
        )

    def _check_model(self, model: str | None) -> None:
        if model is not None:  # any id this server answers to (a steered one tokenizes the same)
            self.steering.resolve_model(model, {})
