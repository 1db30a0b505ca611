"""Server-sent events: framing and the streaming response (plain Starlette, no shutdown magic)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(data: BaseModel | dict[str, Any] | str, event: str | None = None) -> str:
    """One SSE message: optional `event:` line, one `data:` line, blank line."""
    if isinstance(data, BaseModel):
        payload = data.model_dump_json(exclude_none=True)
    elif isinstance(data, dict):
        payload = json.dumps(data)
    else:
        payload = data
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


def sse_response(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
