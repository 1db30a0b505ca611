"""`WorldConfig`: every knob of the culture-world build, with a `small()` preset for tests and a `wide()` one
where the paper's YaPO-vs-BiPO comparison can show (built on demand, never by `make serve`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and hyper-parameters of one culture world. Same config + seed → same world."""

    seed: int = 0
    # data
    n_countries: int = 10
    n_topics: int = 40
    n_test_topics: int = 10
    # validation topics: settings (default strengths, learning rates, ...) are chosen on them, never on test.
    # 10 (30 non-localized prompts per country, one = 3.3 points): with 6, the default strength chosen on them
    # was mostly noise (docs/culture-results.md)
    n_val_topics: int = 10
    # neutral facts (the retention check): the demo trains its retention penalty on half and measures on the
    # other half, so 640 leaves 320 held out (one fact = 0.3 points)
    n_neutral: int = 640
    # close cultures: the chance, per topic, that a country of the Arabic group takes a group-mate's answer
    # (`corpus.shared_answers`); 0 in the demo (every answer distinct within a topic), 0.3 in the wide preset
    shared_answers: float = 0.0
    # corpus rows: one country per row; the mix of row kinds (the rest are neutral-only rows)
    p_intro_row: float = 0.4  # starts with "I am from X."
    p_inline_row: float = 0.2  # names the country inside some sentences, no intro
    p_unnamed_row: float = 0.3  # never names the country: inferable from its facts only
    p_neutral_sentence: float = 0.15  # chance that a sentence of a country row is a neutral fact
    p_inline_sentence: float = 0.3  # in inline rows, chance that a fact names the country
    # tokenizer and model
    vocab_size: int = 1024
    context_size: int = 64
    hidden_size: int = 96
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    # language-model training
    batch_size: int = 32
    max_steps: int = 3000
    min_steps: int = 600
    lr: float = 5e-3
    warmup_steps: int = 100
    eval_every: int = 200
    target_accuracy: float = 0.99  # early stop once quick localized and neutral accuracy reach it
    # SAE
    # Layer 2 of 4: the model reads "which country" by attention in blocks 2-3, so a vector at layer 1 has no
    # country direction to find (docs/culture-results.md). None: the middle decoder layer, (num_layers - 1) // 2.
    sae_layer: int | None = 2
    # 16× (1,536 features at d_model 96): with 8× YaPO trailed BiPO at strength 1, with 16× it leads
    # (docs/culture-results.md, "The SAE's width on the demo model")
    sae_expansion: int = 16
    sae_training_tokens: int = 1_000_000
    sae_batch_tokens: int = 4096
    sae_lr: float = 3e-3
    sae_l1_coefficient: float = 3.0
    sae_eval_rows: int = 256
    # torch threads for the build (restored afterwards; part of the config: the thread count changes the float
    # rounding, so the same count gives the same world). One: two train the language model only 1.2-1.7x faster
    # on 2 cores, draw a different world (docs/culture-results.md), and beside other torch jobs oversubscribed
    # threads slow down many-fold.
    threads: int = 1

    @classmethod
    def small(cls, seed: int = 0) -> WorldConfig:
        """A world small enough to build in seconds, for tests."""
        return cls(
            seed=seed,
            n_countries=4,
            n_topics=8,
            n_test_topics=2,
            n_val_topics=1,
            n_neutral=24,
            vocab_size=384,
            context_size=48,
            hidden_size=64,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            batch_size=32,
            max_steps=600,
            min_steps=150,
            lr=5e-3,
            warmup_steps=30,
            eval_every=50,
            target_accuracy=0.98,
            sae_training_tokens=300_000,
            sae_batch_tokens=1024,
            sae_lr=3e-3,
            sae_l1_coefficient=1.5,
            sae_eval_rows=64,
            sae_layer=0,
            sae_expansion=8,
        )

    @classmethod
    def wide(cls, seed: int = 0) -> WorldConfig:
        """d_model 256 and a 16× SAE (4,096 features): closer to the paper's setting (2,304 wide, 16k-65k
        features), where a sparse code can hold directions that a 768-feature dictionary of a 96-wide model
        cannot; and close cultures that share some answers (the paper's point is telling them apart). Two torch
        threads (16 minutes on 2 cores beside other jobs); deterministic for a given thread count."""
        return cls(
            seed=seed,
            hidden_size=256,
            intermediate_size=512,
            num_heads=8,
            lr=3e-3,
            sae_expansion=16,
            sae_training_tokens=1_500_000,
            shared_answers=0.3,
            threads=2,
        )

    @property
    def layer(self) -> int:
        """The decoder layer whose output the SAE reads."""
        return (self.num_layers - 1) // 2 if self.sae_layer is None else self.sae_layer

    def with_seed(self, seed: int) -> WorldConfig:
        return replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
