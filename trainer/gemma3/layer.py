"""Which layer the SAE (and so every vector) reads: chosen by a quick measurement, not by habit.

For each candidate layer, a CAA-style probe: the mean difference of the last prompt token's residual between
localized prompts of a country ("I am from Morocco. ...") and the same prompts without a country, on train
topics, added at that layer (at `PROBE_STRENGTH`) to non-localized prompts of validation topics. The layer
whose probe lifts the log-probability of the country's answers most (mean over questions and probed countries)
is the one where "which country" is a direction a vector can set; the SAE is trained there. The accuracy gain
is recorded too, but with 30 questions per country it moves in steps of 3.3 points and ties at small strengths.

At strength 1 the mean difference is ~3 % of the residual's norm on this model (|h| ≈ 2,300 at layer 4, 3,500
at 6) and moved no answer at any layer, hence a probe strength of 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.eval.items import McqItem
from vectors.metadata import ModelRef, VectorMetadata, dense_hook_name
from vectors.prompts import format_prompt
from vectors.scoring import Question, option_accuracy, option_logprobs_many, option_priors
from vectors.slots import apply_config
from vectors.vector import SteeringVector


@dataclass(frozen=True)
class LayerProbe:
    layer: int
    logprob_gain: float  # mean over countries and questions of the right answer's log-probability gain (nats)
    gain: float  # mean over countries of (probe-steered − unsteered) non-localized val accuracy
    by_country: dict[str, float]  # accuracy gain per country


PROBE_STRENGTH = 4.0


def _answer_logprobs(model: Any, tokenizer: Any, questions: Sequence[Question]) -> float:
    """Mean log-probability of each question's right option."""
    scores = option_logprobs_many(model, tokenizer, [(q.prompt, q.options) for q in questions])
    return sum(s[q.answer] for s, q in zip(scores, questions, strict=True)) / len(questions)


@torch.no_grad()
def _last_token_states(model: Any, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """[layers, prompts, d]: every decoder block's output at each prompt's last token."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([format_prompt(tokenizer, prompt=prompt)])
        hidden = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states
        out.append(torch.stack([h[0, -1] for h in hidden[1:]]))  # hidden[0] is the embedding
    return torch.stack(out, dim=1)


def _questions(model: Any, tokenizer: Any, items: Sequence[McqItem]) -> list[Question]:
    """Each item as a `Question` toward its country, with its calibration prior (unsteered) if it has one."""
    texts = [list(dict.fromkeys(a for _, a in it.options)) for it in items]
    need = [i for i, it in enumerate(items) if it.null_prompts]
    values = option_priors(model, tokenizer, [(items[i].null_prompts, texts[i]) for i in need])
    priors: dict[int, tuple[float, ...]] = dict(zip(need, values, strict=True))
    return [
        Question(it.prompt, tuple(t), t.index(dict(it.options)[it.country]), priors.get(i))
        for i, (it, t) in enumerate(zip(items, texts, strict=True))
    ]


def probe_layers(
    model: Any, tokenizer: Any, mcq: Sequence[McqItem], countries: Sequence[str], layers: Sequence[int]
) -> list[LayerProbe]:
    """The probe's gain at each of `layers` (see the module docstring)."""
    cfg = model.config
    ref = ModelRef(name="probe", hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers)
    gains: dict[int, dict[str, float]] = {layer: {} for layer in layers}
    lp_gains: dict[int, dict[str, float]] = {layer: {} for layer in layers}
    for country in countries:
        train = [it for it in mcq if it.split == "train" and it.country == country]
        loc = _last_token_states(model, tokenizer, [it.prompt for it in train if it.localized])
        non = _last_token_states(model, tokenizer, [it.prompt for it in train if not it.localized])
        val = _questions(
            model,
            tokenizer,
            [it for it in mcq if it.split == "val" and it.country == country and not it.localized],
        )
        base = option_accuracy(model, tokenizer, val)
        base_lp = _answer_logprobs(model, tokenizer, val)
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
            with apply_config(model, {vec: PROBE_STRENGTH}, {}):
                gains[layer][country] = option_accuracy(model, tokenizer, val) - base
                lp_gains[layer][country] = _answer_logprobs(model, tokenizer, val) - base_lp
    return [
        LayerProbe(layer, sum(lp_gains[layer].values()) / len(g), sum(g.values()) / len(g), g)
        for layer, g in gains.items()
    ]


def best_layer(probes: Sequence[LayerProbe]) -> int:
    """The highest log-probability gain; the earlier layer on a tie (cheaper to train at, more model after it)."""
    return max(probes, key=lambda p: (round(p.logprob_gain, 3), -p.layer)).layer
