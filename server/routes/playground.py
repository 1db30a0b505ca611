"""The steering playground: a static page (HTML, CSS, a little JavaScript) served from the same app.

`/` redirects to `/playground/`; the page and its files need no API key (the user types the key into the page,
and the page sends it with every API call). See `server.middleware.is_open`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PREFIX = "/playground"

router = APIRouter(tags=["playground"])


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The playground (a relative redirect, so it also works behind a path prefix)."""
    return RedirectResponse("playground/", status_code=307)


router.mount(PREFIX, StaticFiles(directory=STATIC_DIR, html=True), name="playground")
