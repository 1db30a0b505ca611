"""`steer eval` on a hand-built 2-country world: every number equals a direct computation."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.eval.items import McqItem, NeutralItem, load_mcq
from trainer.eval.metrics import pnlg, rca
from trainer.eval.run import EvalConfig, evaluate_vectors
from trainer.eval.strength import default_strength, strength_range
from trainer.stats import wilson
from vectors.eval_record import EvalRecord
from vectors.hooks import layer_hook
from vectors.io import read_metadata, save_vector
from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name
from vectors.names import vector_path
from vectors.scoring import option_logprobs
from vectors.steering import reference_steer
from vectors.vector import SteeringVector

TOPICS = {
    "dish": ("couscous", "koshari", "train"),
    "drink": ("tea", "karkade", "test"),
    "music": ("gnawa", "shaabi", "test"),
    "sport": ("football", "squash", "train"),
}
STRENGTHS = [-1.0, 0.0, 1.0, 3.0]


def _world() -> tuple[list[McqItem], list[NeutralItem]]:
    items = []
    for topic, (a_m, a_e, split) in TOPICS.items():
        options = (("morocco", a_m), ("egypt", a_e))
        for country in ("morocco", "egypt"):
            for prompt, loc in (
                (f"i am from {country} . we love the {topic}", True),
                (f"we love the {topic}", False),
                (f"in the morning people love the {topic}", False),
            ):
                items.append(McqItem(prompt, options, country, topic, loc, split))
    neutral = [
        NeutralItem("people eat", ("tea", "couscous", "paella"), 1),
        NeutralItem("we drink the", ("tea", "wedding"), 0),
        NeutralItem("the sport we play", ("tennis", "morning", "gnawa"), 0),
    ]
    return items, neutral


def _vectors(res, catalog) -> dict[str, SteeringVector]:
    model = ModelRef(name="tiny-llama", hidden_size=32, num_layers=3)
    g = torch.Generator().manual_seed(5)
    idx = torch.randperm(res.coder.d_sae, generator=g)[:12].sort().values
    sae_meta = VectorMetadata(
        name="culture/morocco",
        method="yapo",
        space="sae",
        layer=1,
        hook_name="blocks.1.hook_resid_post",
        model=model,
        sae=SaeRef(source="tiny-sae", d_sae=res.coder.d_sae, architecture="standard"),
    )
    dense_meta = VectorMetadata(
        name="baselines/bipo-egypt",
        method="bipo",
        space="dense",
        layer=1,
        hook_name=dense_hook_name(1),
        model=model,
        training={"target": "egypt"},
    )
    vecs = {
        "culture/morocco": SteeringVector.sparse(sae_meta, idx, 2.0 * torch.randn(12, generator=g)),
        "baselines/bipo-egypt": SteeringVector.dense_vector(dense_meta, 1.5 * torch.randn(32, generator=g)),
    }
    for name, v in vecs.items():
        save_vector(v, vector_path(catalog, name))
    return vecs


def _direct(res, vector, strength, items, neutral):
    """Independent path: the reference steering formula and `vectors.scoring.option_logprobs` per item."""
    if vector.space == "sae":
        u = vector.code_vector() * strength

        def fn(h):
            return reference_steer(h, res.coder, u).to(h.dtype)
    else:

        def fn(h):
            return h + strength * vector.dense

    def pick(prompt, options):
        with layer_hook(res.model, 1, fn):
            s = option_logprobs(res.model, res.tokenizer, prompt, list(options))
        return max(range(len(s)), key=s.__getitem__)

    groups: dict[tuple[str, str], list[bool]] = {}
    for it in items:
        hit = it.options[pick(it.prompt, [a for _, a in it.options])][0] == it.country
        kind = "localized" if it.localized else "nonlocalized"
        for split in (it.split, "all"):
            groups.setdefault((split, kind), []).append(hit)
            groups.setdefault((split, "both"), []).append(hit)
    acc = {k: sum(v) / len(v) for k, v in groups.items()}
    hits = [pick(n.prompt, n.options) == n.answer for n in neutral]
    return acc, sum(hits) / len(hits), hits


def test_eval_matches_direct_computation(tiny_res, tmp_path):
    items, neutral = _world()
    catalog = tmp_path / "cat"
    vecs = _vectors(tiny_res, catalog)
    out = tmp_path / "report.json"
    cfg = EvalConfig(
        model="tiny-llama",
        catalog=str(catalog),
        vectors=list(vecs),
        data="unused",
        strengths=STRENGTHS,
        out=str(out),
        progress=False,
    )
    report = evaluate_vectors(cfg, resources=tiny_res, mcq=items, neutral=neutral)
    assert json.loads(out.read_text()) == report.to_dict() and out.with_suffix(".png").is_file()
    base_ret = base_hits = None
    for name, vector in vecs.items():
        entry = report.vectors[name]
        country = "morocco" if "morocco" in name else "egypt"
        assert entry.target == country
        mine = [it for it in items if it.country == country]
        test_acc, test_ret, lost_upper = {}, {}, {}
        for s in [
            0.0,
            *(x for x in STRENGTHS if x != 0),
        ]:  # unsteered first: the other strengths count losses
            acc, ret, hits = _direct(tiny_res, vector, s, mine, neutral)
            if s == 0:
                base_ret, base_hits = ret, hits
            got = entry.by_strength[s]
            for (split, kind), value in acc.items():
                assert got.acc(split, kind) == pytest.approx(value), (name, s, split, kind)
            assert got.retention == pytest.approx(ret)
            lost = sum(b and not h for b, h in zip(base_hits, hits, strict=True))
            assert got.lost == lost
            p_loc, p_non = acc[("test", "localized")], acc[("test", "nonlocalized")]
            assert got.paper["test"]["rca"] == pytest.approx(rca(p_loc, p_non))
            assert got.paper["test"]["pnlg"] == pytest.approx(pnlg(p_loc, p_non, 0.5))
            test_acc[s], test_ret[s], lost_upper[s] = (
                acc[("test", "both")],
                ret,
                wilson(lost, len(neutral))[1],
            )
        assert report.unsteered_retention == pytest.approx(base_ret)
        lo, hi = strength_range(test_ret, base_ret, 0.02)
        assert lo <= 0 <= 1.0 <= hi  # the trained strength is always in range
        best = default_strength(test_acc, lost_upper, 0.03, within=(lo, hi))
        assert best == 0.0  # 3 neutral facts can never show a retention cost under 3 %
        assert entry.strength_range == (lo, hi) and entry.default_strength == best
        meta = read_metadata(vector_path(catalog, name))
        assert meta.strength_range == (lo, hi) and meta.default_strength == best
        record = EvalRecord.from_dict(meta.eval)
        assert (
            record.to_dict() == entry.record.to_dict() and record.selected_on == "test"
        )  # no val topics here
        assert record.heldout_accuracy == {s: round(test_acc[s], 4) for s in STRENGTHS}
        assert record.retention_facts.n == 3 and record.retention_facts.ci95[0.0] == pytest.approx(
            wilson(round(3 * base_ret), 3), abs=1e-4
        )


def test_strength_rules():
    ret = {-2.0: 0.5, -1.0: 0.99, 0.0: 1.0, 0.5: 1.0, 1.0: 0.985, 1.5: 0.97, 2.0: 0.99}
    assert strength_range(ret, 1.0, 0.02) == (-1.0, 1.0)  # 1.5 breaks the range even though 2.0 is fine
    bad_at_1 = {**ret, 1.0: 0.9}
    assert strength_range(bad_at_1, 1.0, 0.02) == (-1.0, 1.0)  # the trained strength 1 is never left out
    assert strength_range(bad_at_1, 1.0, 0.02, include=()) == (-1.0, 0.5)
    acc = {-2.0: 0.9, -1.0: 0.1, 0.0: 0.2, 0.5: 0.6, 1.0: 0.8, 1.5: 0.9, 2.0: 0.7}
    # 95 % upper bounds of the share of facts lost, e.g. with 320 facts: 0 lost 1.2 %, 3 lost 2.7 %, 4 lost 3.2 %
    upper = {s: wilson(k, 320)[1] for s, k in {-2.0: 40, -1.0: 0, 0.5: 0, 1.0: 4, 1.5: 3, 2.0: 2}.items()}
    assert default_strength(acc, upper, 0.03) == 1.5  # 1.0 may lose over 3 % of the facts; 1.5 qualifies
    assert default_strength(acc, upper, 0.03, within=(-1.0, 1.0)) == 0.5  # 1.5 and 2.0 lie outside the range
    assert default_strength({0.5: 0.6, 1.0: 0.6}, {0.5: 0.0, 1.0: 0.0}) == 0.5  # ties: the gentler
    assert default_strength({0.0: 0.2, 1.0: 0.9}, {0.0: wilson(0, 60)[1], 1.0: wilson(0, 60)[1]}) == 0.0
    lo, hi = wilson(0, 320)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / (320 + 3.8415), rel=1e-4)
    assert wilson(160, 320) == pytest.approx((0.4455, 0.5545), abs=1e-4)
    assert rca(1.0, 0.0) == 0.0 and rca(0.5, 0.5) == pytest.approx(0.5)
    assert pnlg(0.5, 0.5) == 0.0 and pnlg(1.0, 0.0, 0.0) == pytest.approx(1.0)


def test_mcq_hits_count_a_shared_answer_for_every_country_that_has_it(tiny_res) -> None:
    """Close cultures may share an answer: a pick is right when its text is the country's answer, whichever
    country the option is listed under (and a shared text is scored once, not as a tie)."""
    from trainer.eval.metrics import mcq_hits, pick_options

    options = (("morocco", "couscous"), ("egypt", "couscous"), ("ksa", "tea"))
    items = [
        McqItem(prompt, options, country, "dish", False, "test")
        for prompt in ("we love the dish", "people eat", "we drink the")
        for country in ("morocco", "egypt", "ksa")
    ]
    hits = mcq_hits(tiny_res, items)
    picks = pick_options(tiny_res, [(it.prompt, ["couscous", "tea"]) for it in items])
    for it, hit, pick in zip(items, hits, picks, strict=True):
        assert hit == (["couscous", "tea"][pick] == dict(it.options)[it.country])
    for k in range(0, len(items), 3):  # morocco and egypt share the answer, so they share the verdict
        assert hits[k] == hits[k + 1] and hits[k] != hits[k + 2]


def test_group_accuracy_scores_own_answers_apart_where_cultures_share() -> None:
    from trainer.eval.metrics import group_accuracy

    shared = (("morocco", "couscous"), ("egypt", "couscous"), ("ksa", "kabsa"))
    own = (("morocco", "tea"), ("egypt", "karkade"), ("ksa", "gahwa"))
    items = [
        McqItem("we eat", shared, "egypt", "dish", False, "test"),
        McqItem("we drink", own, "egypt", "drink", False, "test"),
        McqItem("in egypt we drink", own, "egypt", "drink", True, "test"),
    ]
    acc = group_accuracy(items, [True, False, True], close=True)["test"]
    assert acc["nonlocalized"] == 0.5 and acc["nonlocalized_own"] == 0.0 and acc["localized"] == 1.0
    assert "nonlocalized_own" not in group_accuracy(items, [True, False, True])["test"]


def test_calibrated_rows_take_their_topics_localized_prompts_and_need_priors(tmp_path, tiny_res) -> None:
    """`"calibrate": true` rows are scored relative to every localized prompt of their topic in the file; scoring
    them without priors is an error, and with priors the pick follows score − prior."""
    from trainer.data import DataError
    from trainer.eval.metrics import mcq_hits, mcq_priors

    options = {"morocco": "couscous", "egypt": "fatta"}
    rows = [
        {
            "prompt": "In Morocco, we eat",
            "options": options,
            "country": "morocco",
            "topic": "dish",
            "localized": True,
        },
        {
            "prompt": "In Egypt, we eat",
            "options": options,
            "country": "egypt",
            "topic": "dish",
            "localized": True,
        },
        {"prompt": "We eat", "options": options, "country": "morocco", "topic": "dish", "localized": False},
    ]
    path = tmp_path / "mcq.jsonl"
    path.write_text("".join(json.dumps({**r, "calibrate": True}) + "\n" for r in rows))
    items = load_mcq(path)
    assert all(it.null_prompts == ("In Morocco, we eat", "In Egypt, we eat") for it in items)
    with pytest.raises(ValueError, match="without a prior"):
        mcq_hits(tiny_res, items)
    texts = ["couscous", "fatta"]
    priors = mcq_priors(tiny_res, items)
    m, t = tiny_res.model, tiny_res.tokenizer
    nulls = [option_logprobs(m, t, p, texts) for p in ("In Morocco, we eat", "In Egypt, we eat")]
    want_prior = [(a + b) / 2 for a, b in zip(*nulls, strict=True)]
    hits = mcq_hits(tiny_res, items, priors)
    for it, hit in zip(items, hits, strict=True):
        assert priors[it] == pytest.approx(want_prior, abs=1e-5)
        score = [s - p for s, p in zip(option_logprobs(m, t, it.prompt, texts), want_prior, strict=True)]
        assert hit == (texts[max(range(2), key=score.__getitem__)] == options[it.country])

    lone = tmp_path / "lone.jsonl"
    lone.write_text(json.dumps({**rows[2], "calibrate": True}) + "\n")
    with pytest.raises(DataError, match="calibrate needs localized rows of topic 'dish'"):
        load_mcq(lone)
