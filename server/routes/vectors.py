"""GET /vectors (the catalog, with skipped files and why) and GET /vectors/{name} (full metadata + top features)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.protocol.common import ErrorResponse
from server.protocol.vectors import CatalogResponse, VectorDetail
from server.routes import get_service

router = APIRouter(tags=["vectors"])


@router.get("/vectors", response_model=CatalogResponse)
async def list_vectors(request: Request) -> CatalogResponse:
    """Every loadable vector, and every file that was skipped with the reason."""
    return get_service(request).vectors.list()


@router.get("/vectors/{name:path}", response_model=VectorDetail, responses={404: {"model": ErrorResponse}})
async def get_vector(name: str, request: Request) -> VectorDetail:
    """Full metadata of one vector, plus its largest SAE features."""
    return get_service(request).vectors.get(name)
