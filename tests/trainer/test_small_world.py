"""The trainer on the small culture world (session fixture `world_dir`): a YaPO vector in seconds."""

from __future__ import annotations

import math

from trainer.data import load_pairs
from trainer.train import TrainConfig, train_vector
from vectors.io import load_vector


def test_yapo_on_small_world(world_dir, tmp_path):
    pairs = load_pairs(world_dir / "data" / "pairs" / "morocco.jsonl", where={"split": "train"})
    cfg = TrainConfig(
        method="yapo",
        model=str(world_dir / "model"),
        sae=str(world_dir / "sae"),
        name="culture/morocco",
        out=str(tmp_path / "vectors"),
        target="morocco",
        max_steps=30,
        batch_size=8,
        lr=5e-3,
        warmup_steps=3,
        progress=False,
    )
    result = train_vector(cfg, pairs=pairs)
    assert abs(result.losses[0] - math.log(2)) < 1e-5
    print(f"yapo loss: first {result.losses[0]:.4f}, mean of the last 10 {sum(result.losses[-10:]) / 10:.4f}")
    # How far 30 steps get depends on the world this CPU trained (0.693 -> 0.651 on an AMD EPYC): only that the
    # objective goes down from log 2 is asserted.
    assert sum(result.losses[-10:]) / 10 < result.losses[0]
    vec = load_vector(result.path)
    assert vec.meta.sae.source == str(world_dir / "sae") and vec.nnz > 0
