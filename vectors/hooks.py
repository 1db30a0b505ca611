"""Forward hooks that apply steering tables to the decoder layers of a Hugging Face model.

`steering_hooks` is a context manager: it registers one hook per steered layer plus one on the model that
flips the session phase from "prompt" to "generation" after the first full forward (the prefill of
`model.generate`), and removes every hook in `finally`, whatever happens inside. Steering state lives in
the session object, never in a global, so two sessions on two models never see each other's tables.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vectors.tables import LayerTable, Phase

# attribute paths of the decoder-layer list: Llama / Gemma-2 / Qwen2 / Mistral (+ *ForCausalLM), GPT-2, others
_LAYER_PATHS = (
    "model.layers",
    "layers",
    "transformer.h",
    "h",
    "model.decoder.layers",
    "decoder.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "gpt_neox.layers",
)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of `model` in order; block L's output is the residual stream of "layer L"."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return list(obj)
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__} (tried {', '.join(_LAYER_PATHS)})"
    )


@dataclass
class SteeringSession:
    """Mutable state shared by the hooks of one `steering_hooks` context."""

    tables: dict[int, LayerTable]
    phase: Phase = "prompt"
    auto_phase: bool = True
    forwards: int = field(default=0)

    def set_tables(self, tables: Mapping[int, LayerTable]) -> None:
        """Swap the tables of already-hooked layers (e.g. a new batch with the same layers)."""
        missing = set(tables) - set(self.tables)
        if missing:
            raise ValueError(f"layers {sorted(missing)} are not hooked in this session")
        self.tables = {**self.tables, **tables}


def _steer_output(output: Any, table: LayerTable, phase: Phase) -> Any:
    if isinstance(output, torch.Tensor):
        return table.steer(output, phase)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (table.steer(output[0], phase), *output[1:])
    raise TypeError(f"layer {table.layer}: unsupported decoder-layer output type {type(output).__name__}")


@contextmanager
def steering_hooks(
    model: nn.Module, tables: Mapping[int, LayerTable], *, auto_phase: bool = True
) -> Iterator[SteeringSession]:
    """Apply `tables` (layer -> `LayerTable`) to `model` inside the context; yields the `SteeringSession`.

    With ``auto_phase`` the phase is "prompt" for the first forward of `model` and "generation" afterwards
    (one `generate` call per context). With ``auto_phase=False`` the caller sets ``session.phase``.
    """
    layers = decoder_layers(model)
    for layer in tables:
        if not 0 <= layer < len(layers):
            raise ValueError(
                f"steering layer {layer} out of range: the model has {len(layers)} decoder layers"
            )
    session = SteeringSession(tables=dict(tables), auto_phase=auto_phase)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make_hook(layer: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            table = session.tables.get(layer)
            return output if table is None else _steer_output(output, table, session.phase)

        return hook

    def after_forward(_module: nn.Module, _args: Any, _output: Any) -> None:
        session.forwards += 1
        if session.auto_phase:
            session.phase = "generation"

    try:
        for layer in sorted(tables):
            handles.append(layers[layer].register_forward_hook(make_hook(layer)))
        handles.append(model.register_forward_hook(after_forward))
        yield session
    finally:
        for handle in handles:
            handle.remove()
