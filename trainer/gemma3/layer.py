"""Which layer the SAE (and so every vector) reads: chosen by a quick measurement, not by habit.

For each candidate layer, a CAA-style probe: the mean difference of the last prompt token's residual between
localized prompts of a country ("I am from Morocco. ...") and the same prompts without a country, on train
topics, added at that layer to non-localized prompts of validation topics. The layer whose probe lifts the
country's MCQ accuracy most (mean over the probed countries) is the one where "which country" is a direction
a vector can set; the SAE is trained there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vectors.metadata import ModelRef, VectorMetadata, dense_hook_name
from vectors.prompts import format_prompt
from vectors.scoring import Question, option_accuracy
from vectors.slots import apply_config
from vectors.vector import SteeringVector


@dataclass(frozen=True)
class LayerProbe:
    layer: int
    gain: float  # mean over countries of (probe-steered − unsteered) non-localized val accuracy
    by_country: dict[str, float]


@torch.no_grad()
def _last_token_states(model: Any, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """[layers, prompts, d]: every decoder block's output at each prompt's last token."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([format_prompt(tokenizer, prompt=prompt)])
        hidden = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states
        out.append(torch.stack([h[0, -1] for h in hidden[1:]]))  # hidden[0] is the embedding
    return torch.stack(out, dim=1)


def _questions(rows: Sequence[dict[str, Any]]) -> list[Question]:
    qs = []
    for r in rows:
        keys = list(r["options"])
        qs.append(Question(r["prompt"], tuple(r["options"].values()), keys.index(r["country"])))
    return qs


def probe_layers(
    model: Any, tokenizer: Any, mcq: Sequence[dict[str, Any]], countries: Sequence[str], layers: Sequence[int]
) -> list[LayerProbe]:
    """The probe's gain at each of `layers` (see the module docstring)."""
    cfg = model.config
    ref = ModelRef(name="probe", hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers)
    gains: dict[int, dict[str, float]] = {layer: {} for layer in layers}
    for country in countries:
        train = [r for r in mcq if r["split"] == "train" and r["country"] == country]
        loc = _last_token_states(model, tokenizer, [r["prompt"] for r in train if r["localized"]])
        non = _last_token_states(model, tokenizer, [r["prompt"] for r in train if not r["localized"]])
        val = _questions(
            [r for r in mcq if r["split"] == "val" and r["country"] == country and not r["localized"]]
        )
        base = option_accuracy(model, tokenizer, val)
        for layer in layers:
            meta = VectorMetadata(
                name="probe/caa",
                method="caa",
                space="dense",
                layer=layer,
                hook_name=dense_hook_name(layer),
                model=ref,
            )
            vec = SteeringVector.dense_vector(meta, loc[layer].mean(0) - non[layer].mean(0))
            with apply_config(model, {vec: 1.0}, {}):
                gains[layer][country] = option_accuracy(model, tokenizer, val) - base
    return [LayerProbe(layer, sum(g.values()) / len(g), g) for layer, g in gains.items()]


def best_layer(probes: Sequence[LayerProbe]) -> int:
    """The highest gain; the earlier layer on a tie (cheaper to train at, more of the model after it)."""
    return max(probes, key=lambda p: (round(p.gain, 4), -p.layer)).layer
