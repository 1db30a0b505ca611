"""vLLM's tokenizer routes: POST /tokenize, POST /detokenize, GET /tokenizer_info.

Clients that count or split tokens (lm-eval's `tokenizer_backend=remote`, which `auto` picks when these answer)
then need no local copy of the tokenizer. `/tokenize` encodes text exactly as /v1/completions does (raw, the
tokenizer's usual special tokens) and a chat exactly as /v1/chat/completions formats it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.jsonbody import StrictJsonRoute
from server.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from server.routes import get_service
from server.routes.generate import ERRORS
from server.serving import Service

router = APIRouter(tags=["tokenizer"], route_class=StrictJsonRoute)


def _check_model(service: Service, model: str | None) -> None:
    if model is not None:
        service.steering.resolve_model(
            model, {}
        )  # any id this server answers to (a steered one tokenizes the same)


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Token ids of a text (`add_special_tokens`: the tokenizer's usual BOS) or of a chat (the chat template)."""
    service = get_service(request)
    _check_model(service, body.model)
    ids = service.requests.tokenize(
        prompt=body.prompt,
        messages=[m.as_chat() for m in body.messages] if body.messages is not None else None,
        add_special_tokens=body.add_special_tokens,
    )
    strs = service.engine.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(
        count=len(ids), max_model_len=service.engine.context_length, tokens=ids, token_strs=strs
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    """The text of token ids (special tokens kept, as vLLM does), each id checked against the vocabulary."""
    service = get_service(request)
    _check_model(service, body.model)
    ids = service.requests.checked_ids(body.tokens, "tokens")
    return DetokenizeResponse(prompt=service.engine.tokenizer.decode(ids))


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=ERRORS)
async def tokenizer_info(request: Request) -> TokenizerInfo:
    """The tokenizer's special tokens, chat template and sizes."""
    service = get_service(request)
    tok = service.engine.tokenizer
    template = getattr(tok, "chat_template", None)
    return TokenizerInfo(
        tokenizer_class=type(tok).__name__,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        pad_token=tok.pad_token,
        unk_token=tok.unk_token,
        chat_template=template if isinstance(template, str) else None,
        model_max_length=service.engine.context_length,
        vocab_size=service.engine.vocab_size,
    )
