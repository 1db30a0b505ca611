"""The reference the engine's steered tokens are compared with: Hugging Face `generate` (its own cache and masks)
on one row alone, greedy, with the row's steering applied by `vectors.slots` in forward hooks (`hf_tokens`).
Shared by the slot-cache tests (four model families, Gemma 3's shape) and the real Gemma 3 270M test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from server.engine.model import LoadedModel
from server.engine.request import SteerSpec
from vectors.sae import SparseCoder
from vectors.slots import SlotSteering, compose


@contextmanager
def _steered(model: torch.nn.Module, coder: SparseCoder, spec: SteerSpec) -> Iterator[None]:
    """`model` steered by `spec` as the engine steers a row: the prompt phase on the first forward, the
    generation phase on every later one (each forward of `generate` after the first decodes one token)."""
    steering = SlotSteering(model, [coder], 1, max_neg=64)
    calls: list[int] = []

    def phase(_m: object, _a: object) -> None:
        steering.select(0, 1, "prompt" if not calls else "generation")
        calls.append(1)

    handle = model.register_forward_pre_hook(phase)
    try:
        steering.write(0, compose(spec.as_config(), [coder], coder.d_model))
        yield
    finally:
        handle.remove()
        steering.close()


def hf_tokens(engine: LoadedModel, coder: SparseCoder, ids: list[int], spec: SteerSpec, n: int) -> list[int]:
    """The `n` greedy tokens HF `generate` gives after `ids` on the engine's model, steered by `spec` alone.

    Run when the engine is idle: its hooks stay installed, and with every slot cleared they return h itself.
    """
    assert not any(t.any() for t in (layer.active for layer in engine.runner.steering.layers.values()))
    with torch.no_grad(), _steered(engine.model, coder, spec):
        out = engine.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=engine.tokenizer.pad_token_id,
        )
    return list(out[0, len(ids) :].tolist())
