"""`build_world`: data, tokenizer, language model and SAE of the culture world, in one directory.

Layout of `<out>/`: `data/` (mcq.jsonl, pairs/<country>.jsonl, neutral.jsonl, corpus_sample.txt),
`model/` (save_pretrained: model + tokenizer), `sae/` (sae-lens format), `vectors/` (empty, for the
trainer) and `world.json` (the summary, written last). The build happens in `<out>.tmp` and is renamed
into place at the end, so an interrupted build never leaves a half world behind.
"""

from __future__ import annotations

import json
import platform
import random
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from trainer.world.config import WorldConfig
from trainer.world.corpus import Documents, World, mcq_items, neutral_items, preference_pairs
from trainer.world.evaluate import mcq_accuracy, neutral_accuracy
from trainer.world.lm import make_model, train_lm
from trainer.world.prewarm import finish_prewarm, start_prewarm
from trainer.world.rows import RowEncoder
from trainer.world.sae_train import measure_sae, train_sae
from trainer.world.tokenizer import train_tokenizer
from vectors.access import share_readable
from vectors.device import cpu_name

LOCALIZED_BAR = 0.95  # issue 2: localized accuracy on every split
CHANCE_MARGIN = 0.10  # issue 2: non-localized accuracy within chance ± 10 points
FVE_BAR = 0.9


def chance_accuracy(mcq: list[dict]) -> float:
    """Accuracy of a uniform pick among the countries, on the non-localized MCQ: 1 / countries when every
    answer is distinct, more where close cultures share answers."""
    shares = [
        sum(a == row["options"][row["country"]] for a in row["options"].values()) / len(row["options"])
        for row in mcq
        if not row["localized"]
    ]
    return sum(shares) / len(shares)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line; returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


class _Clock:
    """Seconds per build stage, announced on stderr."""

    def __init__(self, verbose: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.verbose = verbose

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.verbose:
            print(f"[world] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


def _versions() -> dict[str, str]:
    import sae_lens
    import tokenizers
    import transformers

    return {
        "cpu": cpu_name(),  # a world trained on another CPU kind is not bit-identical (docs/culture-results.md)
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "sae_lens": sae_lens.__version__,
    }


def _write_data(world: World, data: Path, docs: Documents, seed: int) -> dict[str, Any]:
    """The JSONL files the trainer and tests read, plus a readable corpus sample."""
    mcq = mcq_items(world)
    sizes: dict[str, Any] = {"mcq": write_jsonl(data / "mcq.jsonl", mcq)}
    sizes["pairs_per_country"] = {
        c.key: write_jsonl(data / "pairs" / f"{c.key}.jsonl", preference_pairs(world, i))
        for i, c in enumerate(world.countries)
    }
    sizes["neutral"] = write_jsonl(data / "neutral.jsonl", neutral_items(world))
    rng = random.Random(f"sample-{seed}")
    sample = "\n\n".join(" ".join(docs.sample(rng, 6)) for _ in range(200))
    (data / "corpus_sample.txt").write_text(sample + "\n", encoding="utf-8")
    return sizes


def build_world(
    out: Path | str,
    config: WorldConfig | None = None,
    *,
    verbose: bool = True,
    prewarm_cache: str | None = None,
) -> dict[str, Any]:
    """Build the culture world of `config` (default `WorldConfig()`) into `out`; returns the summary.

    `prewarm_cache`: an inductor cache folder to compile the server's decode step into while the language model
    trains (`trainer.world.prewarm`); the world is the same with or without it."""
    config = config or WorldConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _build(Path(out), config, verbose, prewarm_cache)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, config: WorldConfig, verbose: bool, prewarm_cache: str | None) -> dict[str, Any]:
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "vectors").mkdir(parents=True)
    clock = _Clock(verbose)
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    with clock.stage("data"):
        world = World.from_config(config)
        docs = Documents(world, config)
        sizes = _write_data(world, tmp / "data", docs, config.seed)
        mcq, neutral = mcq_items(world), neutral_items(world)

    with clock.stage("tokenizer"):
        sentences = list(world.sentences())
        tokenizer = train_tokenizer(sentences, config.vocab_size)
        encoder = RowEncoder(tokenizer, sentences, config.context_size)

    with clock.stage("language model"):
        torch.manual_seed(config.seed)
        model = make_model(config, tokenizer)
        prewarm = (
            start_prewarm(model, tokenizer, config, tmp / "prewarm", prewarm_cache) if prewarm_cache else None
        )
        quick = [it for it in mcq if it["localized"] and it["prompt"].startswith(("I am from", "In "))]

        def learned() -> bool:
            acc = mcq_accuracy(model, tokenizer, quick)
            return min(acc.values()) >= config.target_accuracy and (
                neutral_accuracy(model, tokenizer, neutral) >= config.target_accuracy
            )

        trained = train_lm(model, encoder, docs, config, done=learned)
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")

    with clock.stage("evaluation"):
        accuracy = mcq_accuracy(model, tokenizer, mcq)
        accuracy["neutral"] = neutral_accuracy(model, tokenizer, neutral)

    with clock.stage("sae"):
        torch.manual_seed(config.seed)
        n_rows = -(-config.sae_training_tokens // config.context_size)
        train_rows, _ = encoder.batch(docs, random.Random(f"sae-rows-{config.seed}"), n_rows, fill=True)
        train_sae(model, tokenizer, train_rows, config, tmp / "sae")
        eval_rows, _ = encoder.batch(
            docs, random.Random(f"sae-eval-{config.seed}"), config.sae_eval_rows, fill=True
        )
        sae_stats = measure_sae(model, eval_rows, tmp / "sae", config.layer)

    if prewarm is not None:
        line = finish_prewarm(prewarm, tmp / "prewarm")
        if verbose:
            print(f"[world] {line}", file=sys.stderr, flush=True)
        shutil.rmtree(tmp / "prewarm")
    chance = chance_accuracy(mcq)
    checks = {
        "localized >= 0.95 on every split": all(
            v >= LOCALIZED_BAR for k, v in accuracy.items() if k.startswith("localized/")
        ),
        "non-localized within chance ± 0.10": all(
            abs(v - chance) <= CHANCE_MARGIN for k, v in accuracy.items() if k.startswith("nonlocalized/")
        ),
        "sae fve >= 0.9": sae_stats.fve >= FVE_BAR,
    }
    clock.seconds["total"] = round(time.perf_counter() - started, 2)
    summary: dict[str, Any] = {
        "seed": config.seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "countries": [{"key": c.key, "name": c.name} for c in world.countries],
        "topics": {
            split: [t.key for t in world.topics if world.split(t) == split]
            for split in ("train", "val", "test")
        },
        "sizes": {
            **sizes,
            "sentences": len(set(sentences)),
            "vocab_size": len(tokenizer),
            "lm_parameters": sum(p.numel() for p in model.parameters()),
            "lm_steps": trained.steps,
            "lm_tokens": trained.steps * config.batch_size * config.context_size,
            "sae_training_tokens": config.sae_training_tokens,
        },
        "model": {
            "path": "model",
            "architecture": "LlamaForCausalLM",
            "hidden_size": config.hidden_size,
            "num_layers": config.num_layers,
            "final_loss": round(trained.final_loss, 4),
            "stopped_early": trained.stopped_early,
        },
        "accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "chance": round(chance, 4),
        "sae": {
            "path": "sae",
            "architecture": "standard",
            "layer": config.layer,
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(sae_stats).items()},
        },
        "checks": checks,
        "seconds": clock.seconds,
        "versions": _versions(),
        "config": config.to_dict(),
    }
    (tmp / "world.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    share_readable(tmp)  # save_pretrained leaves model.safetensors 0600: another user could not serve it
    _swap_into_place(tmp, out)
    return summary


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` build (the old world is removed only after the swap)."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
