"""Compile the server's decode step while the world's language model trains, on the core it leaves idle.

The compiled graph depends on the model's and the SAE's shapes, not on their weights, so `steer serve
--compile-only` over the freshly initialised model and a random SAE of the world's width fills inductor's cache
with what `make serve` compiles at start-up (~1.5 min on 2 cores): start-up then finds it there. A failed or slow
prewarm only costs that start-up its compile, never the world: it runs in its own process and its log says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from trainer.world.config import WorldConfig
from trainer.world.sae_train import hook_name_for


def start_prewarm(
    model: Any, tokenizer: Any, config: WorldConfig, folder: Path, cache: str
) -> subprocess.Popen:
    """Write the model as it is now and a random SAE of the world's shape under `folder`, and start compiling
    the decode step over them into `cache` (STEER_COMPILE_CACHE_DIR); the global torch RNG is left untouched."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    with torch.random.fork_rng():
        sae = StandardSAE(
            StandardSAEConfig(
                d_in=config.hidden_size,
                d_sae=config.hidden_size * config.sae_expansion,
                apply_b_dec_to_input=True,
                metadata=SAEMetadata(hook_name=hook_name_for(config.layer), model_name="culture-world"),
            )
        )
    sae.save_model(str(folder / "sae"))
    (folder / "vectors").mkdir(exist_ok=True)
    env = os.environ | {"STEER_COMPILE_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "steer_cli", "serve", "--compile-only", "--model", str(folder / "model")]
    cmd += ["--sae", str(folder / "sae"), "--vectors", str(folder / "vectors")]
    with (folder / "prewarm.log").open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish_prewarm(proc: subprocess.Popen, folder: Path) -> str:
    """Wait for the prewarm; a line saying how it went (the child's last log line: its engine status)."""
    rc = proc.wait()
    lines = (folder / "prewarm.log").read_text(errors="replace").strip().splitlines()
    last = lines[-1].split(": ", 1)[-1] if lines else "no output"
    if rc == 0:
        return f"prewarm: {last}"
    return f"prewarm failed (exit {rc}): {last}; the server compiles at start-up"
