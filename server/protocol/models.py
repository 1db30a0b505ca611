"""The protocol of `GET /v1/models`: the base model and one steered id per catalog vector."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from server.protocol.common import ResponseModel


class ModelSteering(ResponseModel):
    """What a steered model id applies: one catalog vector at its default strength."""

    vector: str
    strength: float
    strength_range: tuple[float, float]
    method: str
    space: str
    layer: int
    apply: str


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sparse-steer"
    root: str = Field(description="The base model id.")
    parent: str | None = Field(default=None, description="The base id, for a steered model id.")
    max_model_len: int
    steer: ModelSteering | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
