"""One error type for the HTTP layer and one function that turns any failure into the one error schema."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.protocol.common import ErrorInfo, ErrorResponse
from vectors.prompts import ChatTemplateError

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class ApiError(Exception):
    """An error with an HTTP status, a machine-readable type and the request field it is about."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.headers = dict(headers or {})


def invalid(param: str, message: str) -> ApiError:
    """A 422 about one request field."""
    return ApiError(422, message, type="invalid_request_error", param=param)


def error_payload(status: int, message: str, type: str, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error (addresses stripped from the message)."""
    info = ErrorInfo(message=_ADDRESS.sub("", message), type=type, param=param, code=status)
    return ErrorResponse(error=info).model_dump()


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_payload(error.status, error.message, error.type, error.param),
        status_code=error.status,
        headers=error.headers,
    )


# pydantic names the member of a union that failed (`str`, `list[str]`, `function-after[_utf8(), str]`):
# not part of the field's name.
_UNION_TAG = re.compile(r"^(?:str|int|float|bool|none|[a-z][a-z-]*\[.*\])$")


def _loc_to_param(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc[1:] if not (isinstance(p, str) and _UNION_TAG.match(p))]
    if loc and loc[0] not in ("body", "query", "path"):
        parts.insert(0, str(loc[0]))
    return ".".join(parts) or "body"


def _validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    first = errors[0]
    param = _loc_to_param(first.get("loc", ()))
    value = first.get("input")
    shown = "" if first.get("type") == "missing" else f" (got {_short(value)})"
    msg = f"`{param}`: {first.get('msg', 'invalid value')}{shown}"
    if len(errors) > 1:
        msg += f"; and {len(errors) - 1} more problem(s)"
    return param, msg


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def handle_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def handle_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors()) or [{"loc": ("body",), "msg": "invalid request"}]
    if errors[0].get("type") == "json_invalid":
        return error_response(ApiError(422, f"body is not valid JSON: {errors[0].get('msg')}", param="body"))
    param, message = _validation_message(errors)
    return error_response(ApiError(422, message, param=param))


async def handle_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI could not decode the body (nesting too deep, huge number, bad UTF-8)
        message = f"body could not be parsed as JSON ({exc.detail}): too deeply nested, a number too long, or not UTF-8"
        return error_response(ApiError(422, message, param="body"))
    kind = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return error_response(ApiError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers))


async def handle_chat_template_error(_: Request, exc: Exception) -> JSONResponse:
    """The model's chat template refused the request's chat: a 422 naming the field, with the template's words."""
    assert isinstance(exc, ChatTemplateError)
    return error_response(invalid(exc.field, f"`{exc.field}`: {exc}"))


def unexpected_error(exc: BaseException) -> ApiError:
    """The 500 an unexpected exception is answered with (its type only: no internals leak)."""
    return ApiError(500, f"internal error: {type(exc).__name__}", type="internal_error")
