"""vLLM's tokenizer routes: POST /tokenize, POST /detokenize, GET /tokenizer_info.

Clients that count or split tokens (lm-eval's `tokenizer_backend=remote`, which `auto` picks when these answer)
then need no local copy of the tokenizer. `/tokenize` encodes text exactly as /v1/completions does (raw, the
tokenizer's usual special tokens) and a chat exactly as /v1/chat/completions formats it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from server.routes import get_service
from server.routes.generate import ERRORS
from server.strict_json import StrictJsonRoute

router = APIRouter(tags=["tokenizer"], route_class=StrictJsonRoute)


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Token ids of a text (`add_special_tokens`: the tokenizer's usual BOS) or of a chat (the chat template)."""
    return get_service(request).tokenizer.tokenize(body)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    """The text of token ids (special tokens kept, as vLLM does), each id checked against the vocabulary."""
    return get_service(request).tokenizer.detokenize(body)


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=ERRORS)
async def tokenizer_info(request: Request) -> TokenizerInfo:
    """The tokenizer's special tokens, chat template and sizes."""
    return get_service(request).tokenizer.info()
