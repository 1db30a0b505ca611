"""The one way anything edits a decoder layer's output: forward hooks on the blocks of a Hugging Face model.

`decoder_layers` finds the blocks (block L's output is the residual stream of "layer L"); `replace_output`
handles the tensor-or-tuple output once; `layer_hook` edits one layer for the duration of a context (trainer
objectives, evaluation, the bench's reference); `install_hooks` installs edits for the life of their owner (the
server's steering buffers, `vectors.slots.SlotSteering`) and returns the handles that remove them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Edit = Callable[[torch.Tensor], torch.Tensor]

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


def text_config(model: nn.Module) -> Any:
    """The decoder's config (multimodal configs nest it)."""
    cfg: Any = model.config
    return cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden states of a decoder block's output (a tensor, or the first item of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unsupported decoder-layer output type {type(output).__name__}")


def replace_output(output: Any, edit: Edit) -> Any:
    """`output` with its hidden states h replaced by `edit(h)` (the rest of a tuple kept)."""
    h = edit(output_tensor(output))
    return h if isinstance(output, torch.Tensor) else (h, *output[1:])


def _checked(model: nn.Module, layers: list[int]) -> list[nn.Module]:
    blocks = decoder_layers(model)
    for layer in layers:
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} decoder layers")
    return blocks


def install_hooks(model: nn.Module, edits: Mapping[int, Edit]) -> list[torch.utils.hooks.RemovableHandle]:
    """Install `edits[L]` on the output of block L; the caller removes the returned handles when done."""
    blocks = _checked(model, list(edits))
    return [
        blocks[layer].register_forward_hook(lambda _m, _a, out, edit=edit: replace_output(out, edit))
        for layer, edit in sorted(edits.items())
    ]


@contextmanager
def layer_hook(model: nn.Module, layer: int, edit: Edit) -> Iterator[None]:
    """Replace the output h of block `layer` by `edit(h)` inside the context (removed in `finally`)."""
    handles = install_hooks(model, {layer: edit})
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
