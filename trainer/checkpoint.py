"""Training checkpoints: tensors in safetensors, everything else in JSON; both written atomically.

Never pickle: the vector, the AdamW moments and the cached π_0 log-probs are plain float32 tensors,
the step counters and history are JSON. A checkpoint carries a fingerprint of the run's settings
and data so `--resume` refuses to continue a different run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from vectors.io import write_atomic


@dataclass
class Checkpoint:
    """State needed to continue a preference-training run exactly where it stopped."""

    step: int
    fingerprint: str
    tensors: dict[str, torch.Tensor]  # v, exp_avg, exp_avg_sq, ref_w, ref_l
    state: dict[str, Any]  # adam_step, history, losses, seconds


def checkpoint_paths(base: Path) -> tuple[Path, Path]:
    """(tensor file, JSON file) for a checkpoint stem. The suffix is not .safetensors so no catalog
    scan mistakes a checkpoint for a vector."""
    return base.with_name(base.name + ".ckpt"), base.with_name(base.name + ".ckpt.json")


def save_checkpoint(base: Path, ckpt: Checkpoint) -> None:
    tensor_path, json_path = checkpoint_paths(base)
    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt.tensors.items()}
    write_atomic(tensor_path, save(tensors))
    meta = {"step": ckpt.step, "fingerprint": ckpt.fingerprint, **ckpt.state}
    write_atomic(json_path, json.dumps(meta).encode())


def load_checkpoint(base: Path) -> Checkpoint | None:
    """The checkpoint at `base`, or None when there is none (or only half of one)."""
    tensor_path, json_path = checkpoint_paths(base)
    if not (tensor_path.is_file() and json_path.is_file()):
        return None
    meta = json.loads(json_path.read_text())
    tensors = load_file(str(tensor_path))
    step = int(meta.pop("step"))
    fingerprint = str(meta.pop("fingerprint"))
    return Checkpoint(step=step, fingerprint=fingerprint, tensors=tensors, state=meta)


def remove_checkpoint(base: Path) -> None:
    for p in checkpoint_paths(base):
        p.unlink(missing_ok=True)


__all__ = ["Checkpoint", "checkpoint_paths", "load_checkpoint", "remove_checkpoint", "save_checkpoint"]
