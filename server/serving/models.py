"""Serving of `GET /v1/models`: the base model and one steered id per catalog vector (at its default strength)."""

from __future__ import annotations

from typing import Any

from server.engine.client import EngineClient
from server.model_ids import steered_id
from server.protocol.models import ModelCard, ModelList, ModelSteering


class ModelsServing:
    """The model cards of this server, over the live catalog."""

    def __init__(self, engine: EngineClient, catalog: Any, created: int) -> None:
        self.engine = engine
        self.catalog = catalog
        self.created = created  # when the server started: every card's `created`

    def list(self) -> ModelList:
        base = self.engine.name
        ctx = self.engine.context_length
        cards = [ModelCard(id=base, created=self.created, root=base, max_model_len=ctx)]
        for vector in sorted(self.catalog.vectors(), key=lambda v: v.name):
            meta = vector.meta
            steering = ModelSteering(
                vector=vector.name,
                strength=meta.default_strength,
                strength_range=meta.strength_range,
                method=meta.method,
                space=vector.space,
                layer=vector.layer,
                apply=meta.apply,
            )
            cards.append(
                ModelCard(
                    id=steered_id(base, vector.name),
                    created=self.created,
                    root=base,
                    parent=base,
                    max_model_len=ctx,
                    steer=steering,
                )
            )
        return ModelList(data=cards)
