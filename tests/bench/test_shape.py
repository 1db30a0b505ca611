"""`steer bench --shape`: the random world of a real config is written once as a servable folder and reused
(a shrunken Gemma 3 config here; the real one is the same code with bigger numbers)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

from bench.config import BenchConfig
from bench.world import shape_folder, shape_world

SMALL = {
    "vocab_size": 2048,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "head_dim": 16,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
}


def test_shape_world_is_written_once_and_loads_like_a_served_model(tmp_path: Path) -> None:
    cfg = BenchConfig.real_shape("gemma3-270m", extra=SMALL, ks=(4, 8))
    folder = shape_folder(cfg, tmp_path)
    assert {p.name for p in folder.iterdir()} == {"model", "sae", "vectors", "world.json"}
    stamp = (folder / "model" / "model.safetensors").stat().st_mtime_ns
    assert shape_folder(cfg, tmp_path) == folder  # reused, not rewritten
    assert (folder / "model" / "model.safetensors").stat().st_mtime_ns == stamp

    world = shape_world(cfg, tmp_path)
    config = world.model.config
    assert type(world.model).__name__ == "Gemma3ForCausalLM" and config.num_key_value_heads == 1
    assert config.tie_word_embeddings and config.sliding_window == 512
    assert len(world.tokenizer) == 2048  # any id the model picks decodes
    assert world.saes[0].coder.d_sae == 4096 and world.layer == 2
    assert sorted(p.name for p in (folder / "vectors" / "bench").iterdir()) == [
        "k4.safetensors",
        "k8.safetensors",
    ]
    assert len(list((folder / "vectors" / "clients").iterdir())) == cfg.clients  # one per client
