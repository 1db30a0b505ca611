"""FastAPI app factory and lifespan: routes, error handlers, middlewares, background loading."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.engine.model import LoadedModel
from server.errors import (
    ApiError,
    handle_api_error,
    handle_chat_template_error,
    handle_http_error,
    handle_validation_error,
)
from server.middleware import ApiKeyAuth, BodyLimit, RequestMetrics, UnexpectedErrors
from server.routes import generate, health, openai, playground, tokenize, vectors
from server.runtime import ServerRuntime
from server.settings import ServerSettings
from vectors.prompts import ChatTemplateError

log = logging.getLogger(__name__)


def create_app(
    settings: ServerSettings, *, engine: LoadedModel | None = None, runtime: ServerRuntime | None = None
) -> FastAPI:
    """The app for `settings`. Pass `engine` to serve an already loaded engine (tests); `runtime` to keep a handle."""
    runtime = runtime or ServerRuntime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start(engine)  # loads in the background: /health answers and /ready says 503 meanwhile
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="sparse-steer",
        summary="Serve learned sparse (SAE-space) steering vectors; each request picks its own.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.steer = runtime
    for router in (
        health.router,
        generate.router,
        vectors.router,
        openai.router,
        tokenize.router,
        playground.router,
    ):
        app.include_router(router)
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(ChatTemplateError, handle_chat_template_error)
    # Added last = outermost: metrics see every status, auth runs before the body is read. Any other
    # exception is answered innermost, by UnexpectedErrors, not by a handler for `Exception`: Starlette
    # re-raises after such a handler, and uvicorn then drops the client's keep-alive connection.
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None and settings.api_key.get_secret_value():
        app.add_middleware(ApiKeyAuth, api_key=settings.api_key.get_secret_value())
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    return app
