"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streaming included).

Steering rides in the model id (`<base>:<vector>@<strength>`, for tools that can only pick a model) or as extra
body fields `steer` and `apply` (the `openai` client's `extra_body={"steer": {...}}`). A request has
prompts × `n` choices; each choice is its own batch row with the request's steering, choice i is row i, and the
rows are queued, admitted and cancelled together: a request answers whole (every choice) or with one error.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse

from server.protocol.chat import ChatCompletionRequest, ChatCompletionResponse
from server.protocol.completions import CompletionRequest, CompletionResponse
from server.protocol.models import ModelList
from server.routes import get_service, respond
from server.routes.generate import ERRORS
from server.strict_json import StrictJsonRoute

router = APIRouter(prefix="/v1", tags=["openai"], route_class=StrictJsonRoute)


@router.get("/models", response_model=ModelList)
async def models(request: HttpRequest) -> ModelList:
    """The base model and one steered id per catalog vector (`<base>:<vector>`, at its default strength)."""
    return get_service(request).models.list()


@router.post("/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(
    body: CompletionRequest, request: HttpRequest
) -> CompletionResponse | StreamingResponse:
    """Continue each prompt `n` times (raw text, no chat template; token ids verbatim); choice `index` =
    prompt position × n + choice number. `echo` repeats the prompt (with its log-probs when `logprobs` is set)."""
    return respond(await get_service(request).completions.create(body, request.is_disconnected))


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: HttpRequest
) -> ChatCompletionResponse | StreamingResponse:
    """Answer the chat `n` times (the model's chat template)."""
    return respond(await get_service(request).chat.create(body, request.is_disconnected))
