"""The culture world: files and schema, determinism, the model's knowledge, the SAE, the CLI."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from trainer.world import WorldConfig
from trainer.world.corpus import Documents, World, mcq_items
from trainer.world.facts import COUNTRIES, TOPICS
from vectors.device import cpu_name


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_world_files_and_schema(world_dir: Path, world_summary: dict) -> None:
    countries = [c["key"] for c in world_summary["countries"]]
    mcq = _jsonl(world_dir / "data" / "mcq.jsonl")
    assert mcq
    for row in mcq:
        assert set(row) == {"prompt", "options", "country", "topic", "localized", "split"}
        assert list(row["options"]) == countries
        assert len(set(row["options"].values())) == len(countries)
        assert row["country"] in countries and row["split"] in ("train", "val", "test")
        assert isinstance(row["localized"], bool)
    answers = {(r["topic"], r["country"]): r["options"][r["country"]] for r in mcq}
    for key in countries:
        pairs = _jsonl(world_dir / "data" / "pairs" / f"{key}.jsonl")
        assert pairs
        for p in pairs:
            assert set(p) == {"prompt", "chosen", "rejected", "topic", "localized", "split"}
            assert p["chosen"] == answers[(p["topic"], key)]
            assert p["rejected"] != p["chosen"]
            assert p["rejected"] in {answers[(p["topic"], c)] for c in countries}
            assert p["localized"] is False
            assert not any(c["name"] in p["prompt"] for c in world_summary["countries"])
    neutral = _jsonl(world_dir / "data" / "neutral.jsonl")
    assert neutral and all(n["answer"] in n["options"] for n in neutral)
    assert (world_dir / "vectors").is_dir() and not any((world_dir / "vectors").iterdir())
    assert not world_dir.with_name(world_dir.name + ".tmp").exists()
    for key in ("countries", "topics", "sizes", "accuracy", "sae", "seconds", "seed", "versions"):
        assert key in world_summary
    assert world_summary["versions"]["cpu"] == cpu_name()  # a world says which CPU kind trained it
    splits = world_summary["topics"]
    assert set(splits) == {"train", "val", "test"} and all(splits.values())
    assert sum(len(t) for t in splits.values()) == len(set().union(*map(set, splits.values())))
    assert world_summary["seconds"]["total"] > 0


def test_world_is_readable_by_other_users(world_dir: Path) -> None:
    # A server in a container (uid 10001) reads a world built on the host: nothing narrower than the umask allows
    # (save_pretrained alone leaves model.safetensors 0600).
    from vectors.access import default_mode

    for path in [world_dir, *world_dir.rglob("*")]:
        want = default_mode(directory=path.is_dir())
        assert path.stat().st_mode & want == want, f"{path}: {path.stat().st_mode & 0o7777:04o}"


def test_topic_split_is_consistent(world_dir: Path, world_summary: dict) -> None:
    split = {t: s for s, topics in world_summary["topics"].items() for t in topics}
    for row in _jsonl(world_dir / "data" / "mcq.jsonl"):
        assert row["split"] == split[row["topic"]]


def test_default_world_meets_the_issue_sizes() -> None:
    cfg = WorldConfig()
    world = World.from_config(cfg)
    assert len(world.countries) >= 8 and len(world.topics) >= 30 and len(world.neutral) >= 600
    assert len(world.neutral[1::2]) >= 300  # the demo's held-out half (trainer.demo.report.split_neutral)
    assert len(world.val_topics) >= 5 and world.val_topics.isdisjoint(world.test_topics)
    kinds = Counter(f.prompt.split()[1] for f in world.neutral if f.prompt.startswith("The "))
    assert len(kinds) >= 10 and max(kinds.values()) < len(world.neutral) / 4  # varied templates
    assert len({f.prompt for f in world.neutral}) == len(world.neutral)
    assert [c.key for c in world.countries[:4]] == ["morocco", "egypt", "ksa", "levantine"]
    assert cfg.hidden_size * cfg.sae_expansion >= 8 * cfg.hidden_size
    for topic in TOPICS:
        assert len(set(topic.answers)) == len(COUNTRIES)


def test_data_is_deterministic_from_the_seed(world_dir: Path, tmp_path: Path) -> None:
    from trainer.world.build import _write_data

    cfg = WorldConfig.small()
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        world = World.from_config(cfg.with_seed(seed))
        _write_data(world, tmp_path / name, Documents(world, cfg.with_seed(seed)), seed)
    files = ["mcq.jsonl", "neutral.jsonl", "corpus_sample.txt", "pairs/morocco.jsonl"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        assert (tmp_path / "a" / f).read_bytes() == (world_dir / "data" / f).read_bytes()
    assert (tmp_path / "a" / "corpus_sample.txt").read_bytes() != (
        tmp_path / "c" / "corpus_sample.txt"
    ).read_bytes()


def test_tokenizer_and_rows_are_deterministic() -> None:
    from trainer.world.rows import RowEncoder
    from trainer.world.tokenizer import train_tokenizer

    cfg = WorldConfig.small()
    world = World.from_config(cfg)
    sentences = list(world.sentences())
    batches = []
    for _ in range(2):
        tok = train_tokenizer(sentences, cfg.vocab_size)
        enc = RowEncoder(tok, sentences, cfg.context_size)
        batches.append(enc.batch(Documents(world, cfg), random.Random(7), 8))
    assert batches[0][0].equal(batches[1][0]) and batches[0][1].equal(batches[1][1])


def test_documents_are_about_one_country() -> None:
    cfg = WorldConfig()
    world = World.from_config(cfg)
    owner = {(t.key, a): i for t in world.topics for i, a in enumerate(t.answers)}
    by_sentence_end = {f" {a}.": (t.key, a) for t in world.topics for a in t.answers}
    docs = Documents(world, cfg)
    rng = random.Random(0)
    first_owner: Counter[int] = Counter()
    for _ in range(2000):
        doc = docs.sample(rng, 6)
        owners = set()
        for k, sentence in enumerate(doc):
            named = {i for i, c in enumerate(world.countries) if c.name in sentence}
            facts = {owner[v] for end, v in by_sentence_end.items() if sentence.endswith(end) and v in owner}
            owners |= named | (facts if len(facts) == 1 else set())
            if k == 0 and not named and len(facts) == 1:
                first_owner.update(facts)
        assert len(owners) <= 1, doc
    counts = [first_owner[i] for i in range(len(world.countries))]
    assert min(counts) > 0.6 * max(counts)  # unnamed opening facts: every country about equally often


def test_small_world_knows_its_facts(world_summary: dict) -> None:
    acc = world_summary["accuracy"]
    chance = 1 / len(world_summary["countries"])
    for split in ("train", "test"):
        assert acc[f"localized/{split}"] >= 0.9
        assert abs(acc[f"nonlocalized/{split}"] - chance) <= 0.1
    assert acc["neutral"] >= 0.9


def test_saved_model_reproduces_the_reported_accuracy(world_dir: Path, world_summary: dict, world_lm) -> None:
    from trainer.world.evaluate import mcq_accuracy

    model, tokenizer = world_lm
    items = [r for r in _jsonl(world_dir / "data" / "mcq.jsonl") if r["split"] == "test"]
    acc = mcq_accuracy(model, tokenizer, items)
    assert acc["localized/test"] == pytest.approx(world_summary["accuracy"]["localized/test"])
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id


def test_sae_loads_with_sae_lens(world_dir: Path, world_summary: dict) -> None:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(world_dir / "sae"), device="cpu")
    hidden = WorldConfig.small().hidden_size
    assert sae.cfg.d_in == hidden and sae.cfg.d_sae >= 8 * hidden
    assert sae.cfg.metadata.hook_name == f"model.layers.{world_summary['sae']['layer']}"
    stats = world_summary["sae"]
    assert stats["fve"] >= 0.7  # the small world's SAE; the default world's bar is 0.9
    assert 0 < stats["l0"] < sae.cfg.d_sae and stats["dead_features"] >= 0


def test_cli_registers_demo_build() -> None:
    from steer_cli import build_parser

    args = build_parser().parse_args(["demo", "build", "--small", "--out", "x", "--seed", "3"])
    assert args.small and args.out == "x" and args.seed == 3 and callable(args.handler)


def test_interrupted_build_leaves_no_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.world.build as build

    out = tmp_path / "demo"
    out.mkdir()
    (out / "world.json").write_text("{}")  # an older world stays as it was

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "train_lm", boom)
    with pytest.raises(KeyboardInterrupt):
        build.build_world(out, WorldConfig.small(), verbose=False)
    assert (out / "world.json").read_text() == "{}"
    assert not (out.with_name("demo.tmp") / "world.json").exists()


def test_mcq_covers_every_country_topic_and_form() -> None:
    world = World.from_config(WorldConfig.small())
    rows = mcq_items(world)
    forms = Counter((r["country"], r["topic"], r["localized"]) for r in rows)
    assert len(forms) == len(world.countries) * len(world.topics) * 2
    for r in rows:
        named = [c for c in world.countries if c.name in r["prompt"]]
        assert (named == [next(c for c in world.countries if c.key == r["country"])]) == r["localized"]


def test_close_cultures_share_some_answers_and_pairs_stay_contrastive() -> None:
    """`shared_answers`: only the Arabic group's answers change, to a group-mate's, deterministically from the
    seed; pairs never prefer an answer over itself; chance counts shared answers; 0 is the fixed table."""
    from dataclasses import replace

    from trainer.world.build import chance_accuracy
    from trainer.world.corpus import preference_pairs
    from trainer.world.facts import CLOSE_GROUP

    base = World.from_config(WorldConfig())
    assert all(base.answers[t.key] == t.answers for t in base.topics)
    assert chance_accuracy(mcq_items(base)) == pytest.approx(1 / len(base.countries))
    cfg = replace(WorldConfig(), shared_answers=0.3)
    world = World.from_config(cfg)
    assert world.answers == World.from_config(cfg).answers
    group = [i for i, c in enumerate(world.countries) if c.key in CLOSE_GROUP]
    shared = 0
    for t in world.topics:
        got = world.answers[t.key]
        assert [got[i] for i in range(len(got)) if i not in group] == [
            t.answers[i] for i in range(len(got)) if i not in group
        ]
        assert {got[i] for i in group} <= {t.answers[i] for i in group}
        shared += len({got[i] for i in group}) < len(group)
    assert len(world.topics) // 4 <= shared < len(world.topics)  # some topics, not all
    for ci in group:
        rows = preference_pairs(world, ci)
        assert rows and all(r["chosen"] != r["rejected"] for r in rows)
    assert 1 / len(world.countries) < chance_accuracy(mcq_items(world)) < 0.2


def test_prewarm_compiles_beside_the_build_and_leaves_the_world_unchanged(
    world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build_world(prewarm_cache=…)` (`make serve`'s world step): a child compiles the server's decode step into
    the cache while the model trains; the model it trains is the same bytes as a build without it."""
    from trainer.world import build_world

    monkeypatch.setenv("STEER_MAX_BATCH", "1")  # one bucket: the child compiles once
    monkeypatch.setenv("STEER_ENGINE", "auto")  # the suite's default is eager
    cache = tmp_path / "cache"
    build_world(tmp_path / "world", WorldConfig.small(), verbose=False, prewarm_cache=str(cache))
    for f in ("model/model.safetensors", "sae/sae_weights.safetensors", "data/mcq.jsonl"):
        assert (tmp_path / "world" / f).read_bytes() == (world_dir / f).read_bytes(), f
    assert not (tmp_path / "world" / "prewarm").exists()
    assert any(p.is_file() for p in cache.rglob("*")), "the child compiled nothing into the cache"
