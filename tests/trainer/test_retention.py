"""The retention penalty: facts become pairs, the penalty is inert at v = 0 and keeps answers when weighted."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.trainer.kit_tiny import COUNTRIES, TOPICS, train_config
from trainer.data import DataError, PreferencePair, load_pairs
from trainer.eval.items import load_neutral
from trainer.retention import load_retention_pairs, retention_pairs, retention_penalty
from trainer.train import train_vector
from vectors.io import read_metadata


def egypt_facts() -> list[dict]:
    """Questions a morocco vector tends to break: an Egyptian's wedding, answered the Egyptian way."""
    egypt = COUNTRIES.index("egypt")
    return [
        {"prompt": f"i am from egypt . at a wedding we love the {t}", "options": list(a), "answer": a[egypt]}
        for t, a in TOPICS.items()
    ]


def _cfg(tmp_path, **kw):
    return train_config(tmp_path, **{"retain_batch_size": 6, **kw})


def test_facts_become_one_pair_per_wrong_option(tmp_path):
    pairs = retention_pairs([{"prompt": "a cow says", "options": ["woof", "moo", "baa"], "answer": "moo"}])
    assert pairs == [PreferencePair("a cow says", "moo", "woof"), PreferencePair("a cow says", "moo", "baa")]
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(json.dumps(f) for f in egypt_facts()) + "\n")
    assert len(load_retention_pairs(path)) == len(TOPICS) * (len(COUNTRIES) - 1)
    bad = [
        ({"prompt": "p", "options": ["a", "b"]}, "need prompt, options"),
        ({"prompt": "p", "options": ["a", "b"], "answer": "c"}, "one of at least two"),
        ({"prompt": "p", "options": ["a"], "answer": "a"}, "one of at least two"),
        ({"prompt": "", "options": ["a", "b"], "answer": "a"}, "non-empty text"),
    ]
    for row, message in bad:
        with pytest.raises(DataError, match=message):
            retention_pairs([row], source="facts.jsonl")
    with pytest.raises(DataError, match="no retention facts"):
        retention_pairs([])


def test_penalty_counts_only_lost_lead():
    """Leads m = log π(answer) − log π(wrong): π_0 has 3, 0.5, 4, −1; the steered model 5, −0.5, 1, −2."""
    ref_w, ref_l = torch.tensor([3.0, 0.5, 4.0, -1.0]), torch.zeros(4)
    policy_w = torch.tensor([5.0, -0.5, 1.0, -2.0], requires_grad=True)
    whole = retention_penalty(policy_w, torch.zeros(4), ref_w, ref_l)  # keep every lead: losses 0, 1, 3, 1
    assert float(whole.detach()) == pytest.approx((0 + 1 + 9 + 1) / 4)
    whole.backward()
    assert policy_w.grad.tolist() == pytest.approx([0.0, -0.5, -1.5, -0.5])
    floored = retention_penalty(policy_w, torch.zeros(4), ref_w, ref_l, floor=2.0)  # keep 2, 0.5, 2, −1
    assert float(floored.detach()) == pytest.approx((0 + 1 + 1 + 1) / 4)
    unchanged = retention_penalty(ref_w, ref_l, ref_w, ref_l, floor=2.0)
    assert float(unchanged) == 0.0


def test_weight_zero_trains_the_same_vector(tiny_res, morocco_pairs, tmp_path):
    """Retention rows ride in the batch but with weight 0 they change nothing (padding aside)."""
    retain = retention_pairs(egypt_facts())
    plain = train_vector(_cfg(tmp_path, out=None), resources=tiny_res, pairs=morocco_pairs)
    inert = train_vector(
        _cfg(tmp_path, out=None, retain_weight=0.0, log_every=1),
        resources=tiny_res,
        pairs=morocco_pairs,
        retain=retain,
    )
    assert inert.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert inert.history[0]["retain_penalty"] == 0.0  # step 1 runs at v = 0: no margin moves
    assert inert.losses == pytest.approx(plain.losses, abs=1e-5)
    torch.testing.assert_close(inert.vector.code_vector(), plain.vector.code_vector(), atol=1e-5, rtol=1e-4)


def test_weighted_penalty_keeps_the_neutral_answers(world_dir, tmp_path):
    """On the small culture world a morocco vector breaks neutral facts unless the penalty is trained against.

    Same data and seed; weight 0 only watches the penalty, weight 1 optimises it."""
    from trainer.demo.report import split_neutral
    from trainer.resources import load_resources

    res = load_resources(str(world_dir / "model"), str(world_dir / "sae"))
    pairs = load_pairs(world_dir / "data" / "pairs" / "morocco.jsonl", where={"split": "train"})
    retain = retention_pairs(split_neutral(load_neutral(world_dir / "data" / "neutral.jsonl"))[0])
    runs = {}
    for weight in (0.0, 1.0):
        cfg = _cfg(
            tmp_path / str(weight),
            model=str(world_dir / "model"),
            max_steps=40,
            batch_size=16,
            lr=1e-2,
            beta=1.0,
            warmup_steps=3,
            log_every=10,
            checkpoint_every=40,
            retain_weight=weight,
        )
        runs[weight] = train_vector(cfg, resources=res, pairs=pairs, retain=retain)
    broken, kept = (runs[w].history[-1]["retain_penalty"] for w in (0.0, 1.0))
    print(f"retain penalty after 40 steps: weight 0 {broken:.4f}, weight 1 {kept:.4f}")
    # How much an unprotected vector breaks depends on what the run learned on this CPU (27 on an AMD EPYC):
    # only that it breaks some, and that optimising the penalty removes nearly all of it, is asserted.
    assert broken > 0, "unprotected, this vector breaks neutral answers on the small world"
    assert kept < 0.1 * broken
    meta = read_metadata(runs[1.0].path).training.retain
    assert meta is not None and meta.pairs == len(retain) and meta.weight == 1.0
    assert meta.data_hash is not None and meta.data_hash.startswith("sha256:")


def test_resume_with_retention_is_bit_for_bit(tiny_res, morocco_pairs, tmp_path):
    retain = retention_pairs(egypt_facts())
    full = train_vector(_cfg(tmp_path / "a"), resources=tiny_res, pairs=morocco_pairs, retain=retain)
    train_vector(_cfg(tmp_path / "b", stop_after=5), resources=tiny_res, pairs=morocco_pairs, retain=retain)
    resumed = train_vector(
        _cfg(tmp_path / "b", resume=True), resources=tiny_res, pairs=morocco_pairs, retain=retain
    )
    assert resumed.losses == full.losses
    with pytest.raises(ValueError, match="different run"):
        train_vector(
            _cfg(tmp_path / "b", resume=True), resources=tiny_res, pairs=morocco_pairs, retain=retain[:3]
        )


def test_retention_is_refused_for_mean_difference_methods(tiny_res, morocco_pairs, tmp_path):
    with pytest.raises(ValueError, match="yapo and bipo"):
        train_vector(
            _cfg(tmp_path, method="caa", layer=1),
            resources=tiny_res,
            pairs=morocco_pairs,
            retain=retention_pairs(egypt_facts()),
        )


def test_the_penalty_at_further_strengths_adds_the_penalty_of_the_scaled_vector(
    tiny_res, morocco_pairs, tmp_path
):
    """`retain_strengths=(2,)`: a step's penalty is the penalty at 1 plus the one at 2, and the penalty of v at 2
    is that of 2·v at 1 (u = strength · v), so one step with the extra strength equals two plain steps' sum."""
    from trainer.preference import PreferenceRun
    from trainer.tokens import encode_pairs

    retain = retention_pairs(egypt_facts())
    encoded, stats = encode_pairs(tiny_res.tokenizer, morocco_pairs)
    retained, _ = encode_pairs(tiny_res.tokenizer, retain)
    v = 3.0 * torch.randn(tiny_res.coder.d_sae, generator=torch.Generator().manual_seed(2))

    def penalty(scale: float, strengths: tuple[float, ...]) -> float:
        cfg = _cfg(
            tmp_path, retain_weight=1.0, retain_margin=1.0, retain_strengths=strengths, checkpoint_every=99
        )
        run = PreferenceRun.setup(cfg, tiny_res, 1, morocco_pairs, encoded, stats, retained, retain)
        with torch.no_grad():
            run.steer.v.copy_(scale * v)
        with run.hooks():
            return run.step(0).penalty

    at_1, at_2 = penalty(1.0, ()), penalty(2.0, ())
    assert at_2 > at_1 > 0
    assert penalty(1.0, (2.0,)) == pytest.approx(at_1 + at_2, rel=1e-5)
    with pytest.raises(ValueError, match="retain_strengths"):
        _cfg(tmp_path, retain_strengths=(0.0,)).validate(loaded=True)
