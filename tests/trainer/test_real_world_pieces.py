"""Pieces of the Gemma 3 world build that need no Gemma: its calibrated MCQ rows and generalization rows, and
the SAE trained by sae-lens on cached activations (read back by sae-lens and by the server's loader)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.trainer.kit_tiny import build_model
from trainer.eval.items import load_mcq
from trainer.gemma3.data import GENERAL_SPLIT, culture_data, general_rows
from trainer.gemma3.sae import SaeTraining, collect_activations, norm_cap, train_sae_on_activations
from trainer.world.facts import COUNTRIES
from trainer.world.sae_train import measure_sae
from vectors.sae import load_sae


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_every_mcq_row_is_calibrated_on_every_countrys_localized_prompts(tmp_path) -> None:
    path = tmp_path / "mcq.jsonl"
    _write(path, culture_data(0).mcq)
    items = load_mcq(path)
    by_topic: dict[str, set[str]] = {}
    for it in items:
        if it.localized:
            by_topic.setdefault(it.topic, set()).add(it.prompt)
    for it in items:
        assert set(it.null_prompts) == by_topic[it.topic]
        assert len(it.null_prompts) == 4 * len(COUNTRIES)  # four localized templates × every country


def test_generalization_rows_come_localized_and_not_and_never_overlap_the_topic_table(tmp_path) -> None:
    path = tmp_path / "general.jsonl"
    _write(path, general_rows())
    items = load_mcq(path)
    assert {it.split for it in items} == {GENERAL_SPLIT}
    topics = {it.topic for it in items}
    assert len(topics) >= 40 and not topics & {t for ts in culture_data(0).splits.values() for t in ts}
    for topic in topics:
        rows = [it for it in items if it.topic == topic]
        assert sum(not it.localized for it in rows) == len(COUNTRIES)  # the stem, gold = each country once
        morocco = [it.prompt for it in rows if it.localized and it.country == "morocco"]
        assert morocco and all("Morocco" in p for p in morocco)
        assert all(it.null_prompts and len(set(it.null_prompts)) == 4 * len(COUNTRIES) for it in rows)


@pytest.mark.parametrize(("architecture", "loaded_as"), [("batchtopk", "jumprelu"), ("standard", "standard")])
def test_sae_trained_on_cached_activations_loads_and_reconstructs(tmp_path, architecture, loaded_as) -> None:
    """The activations are block 1's output without BOS; the trained SAE is a sae-lens folder whose hook is that
    block, folded to raw residuals, that the server's loader reads as an element-wise SAE (BatchTopK is saved as
    JumpReLU), and it reconstructs better than the mean."""
    torch.manual_seed(0)
    model = build_model(40, seed=0).eval()
    rows = torch.randint(4, model.config.vocab_size, (24, 17))
    rows[:, 0] = 1  # BOS
    acts = collect_activations(model, rows, layer=1)
    with torch.no_grad():
        hidden = model(input_ids=rows, output_hidden_states=True).hidden_states[2]  # [0] is the embedding
    assert torch.allclose(acts, hidden[:, 1:].reshape(-1, hidden.shape[-1]), atol=1e-5)
    cap = norm_cap(acts)
    assert cap == 3 * float(acts.norm(dim=-1).median())

    d_sae = 4 * acts.shape[1]
    spec = SaeTraining(
        d_sae=d_sae,
        lr=3e-3,
        samples=64 * 300,
        batch=64,
        seed=0,
        architecture=architecture,
        k=16,
        sparsity_coefficient=0.5,
    )
    train_sae_on_activations(acts, 1, spec, tmp_path / "sae", model_name="tiny")
    coder = load_sae(tmp_path / "sae")
    assert coder.layer == 1 and coder.architecture == loaded_as and coder.elementwise and not coder.normalizes
    stats = measure_sae(model, rows, tmp_path / "sae", 1, max_norm=cap)
    assert stats.hook_name == "model.layers.1" and stats.d_sae == d_sae
    assert stats.fve > 0.5, stats
    if architecture == "batchtopk":  # the saved threshold keeps L0 near k (wide margin: it is learned)
        assert stats.l0 < d_sae / 4, stats
