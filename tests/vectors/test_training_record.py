"""`TrainingRecord`: the typed `training` object of a vector's metadata reads what trainers wrote and writes it
back unchanged (unknown keys kept, absent keys absent, nulls null)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.vectors.kit_vectors import dense_meta, sae_meta
from vectors.io import load_vector, read_metadata, save_vector
from vectors.metadata import VectorMetadata
from vectors.training_record import Effect, LossCurve, TrainingRecord
from vectors.vector import SteeringVector

# What `steer train` writes for a YaPO run with retention facts (trainer/train.py), nulls included.
YAPO: dict[str, Any] = {
    "method": "yapo",
    "data": "culture.jsonl",
    "data_hash": "sha256:9f2c",
    "where": {"split": "train"},
    "pairs": 180,
    "encode": {
        "kept": 180,
        "skipped_overlong": 0,
        "skipped_empty_after_truncation": 0,
        "skipped_identical": 0,
        "truncated": 0,
    },
    "layer": 2,
    "hyperparameters": {
        "beta": 0.1,
        "lr": 0.0005,
        "epochs": 20,
        "max_steps": None,
        "batch_size": 4,
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "seed": 11,
        "max_length": 512,
        "top_k": None,
        "l1": 0.0,
        "tau": 0.0,
        "dtype": "float32",
    },
    "reference_mode": False,
    "target": "morocco",
    "steps": 300,
    "warmup_steps": 30,
    "final_loss": 0.0712,
    "steps_to_loss_0.1": None,
    "seconds": 41.5,
    "loss_curve": {"step": [10, 20, 30], "loss": [0.69, 0.31, 0.0712]},
    "retain": {
        "data": "facts.jsonl",
        "data_hash": "sha256:11ab",
        "pairs": 40,
        "weight": 1.0,
        "batch_size": 16,
        "margin": None,
        "strengths": [1.0, -1.0],
        "final_penalty": 0.002,
    },
    "effect": {
        "pairs": 180,
        "shift_norm": 37.1,
        "residual_norm": 78.2,
        "margin_gain": 4.3,
        "ranked_unsteered": 0.43,
        "ranked_steered": 0.96,
        "weak": False,
    },
}


def test_a_trainer_record_reads_typed_and_round_trips_exactly() -> None:
    record = TrainingRecord.from_dict(YAPO)
    assert (record.method, record.target, record.layer, record.steps) == ("yapo", "morocco", 2, 300)
    assert record.hyperparameters is not None and record.hyperparameters.lr == 5e-4
    assert record.hyperparameters.seed == 11 and record.hyperparameters.top_k is None
    assert record.steps_to_loss is None and record.final_loss == 0.0712
    assert record.loss_curve == LossCurve(step=(10, 20, 30), loss=(0.69, 0.31, 0.0712))
    assert (
        record.retain is not None and record.retain.strengths == (1.0, -1.0) and record.retain.margin is None
    )
    assert record.effect is not None and record.effect.margin_gain == 4.3 and not record.effect.weak
    assert record.extra == {}
    assert record.to_dict() == YAPO
    assert json.loads(json.dumps(record.to_dict())) == YAPO


def test_unknown_keys_are_kept_and_missing_ones_stay_absent() -> None:
    """A hand-made or older record: few fields, keys this reader does not know (at the top and nested)."""
    raw = {
        "position": "last token",
        "steps_to_loss_0.1": 120,
        "notes": {"by": "hand", "tags": ["a", "b"]},
        "hyperparameters": {"lr": 0.001, "schedule": "cosine"},
        "effect": {**YAPO["effect"], "probe": "v2"},
    }
    record = TrainingRecord.from_dict(raw)
    assert record.extra == {"notes": {"by": "hand", "tags": ["a", "b"]}}
    assert record.hyperparameters is not None and record.hyperparameters.extra == {"schedule": "cosine"}
    assert record.effect is not None and record.effect.extra == {"probe": "v2"}
    assert record.steps_to_loss == 120 and record.position == "last token"
    assert (record.method, record.target, record.retain, record.loss_curve) == (None, None, None, None)
    assert record.where == {} and record.encode == {}
    assert record.to_dict() == raw
    assert TrainingRecord().to_dict() == {}


def test_a_set_field_is_written_under_its_file_name() -> None:
    record = TrainingRecord(method="caa", steps_to_loss=7, loss_curve=LossCurve(step=(1,), loss=(0.5,)))
    assert record.to_dict() == {
        "method": "caa",
        "steps_to_loss_0.1": 7,
        "loss_curve": {"step": [1], "loss": [0.5]},
    }
    assert TrainingRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"loss_curve": {"step": [1, 2], "loss": [0.5]}}, "loss_curve"),
        ({"pairs": "many"}, "pairs"),
        ({"effect": {"pairs": 3}}, "effect"),
        ({"hyperparameters": {"seed": "eleven"}}, "seed"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainingRecord.from_dict(raw)


def test_effect_serialises_as_its_fields() -> None:
    effect = Effect.from_dict(YAPO["effect"])
    assert effect.to_dict() == YAPO["effect"] and Effect(**YAPO["effect"]) == effect


def test_the_vector_file_keeps_its_training_object(tmp_path: Path) -> None:
    """Through the safetensors header and `with_meta` (a metadata rewrite), `training` is the same JSON."""
    raw = {**copy.deepcopy(YAPO), "notes": {"by": "hand"}}
    meta = sae_meta(training=raw)
    assert isinstance(meta.training, TrainingRecord) and meta.training.target == "morocco"
    assert json.loads(meta.to_json())["training"] == raw
    assert (
        meta.model_dump()["training"] == meta.model_dump(mode="json")["training"] == raw
    )  # GET /vectors/{name}
    assert VectorMetadata.model_validate_json(meta.to_json()) == meta

    path = save_vector(
        SteeringVector.sparse(meta, torch.tensor([3]), torch.tensor([1.0])), tmp_path / "v.safetensors"
    )
    assert read_metadata(path).training.to_dict() == raw
    renamed = load_vector(path).with_meta(default_strength=2.0)
    assert renamed.meta.training.to_dict() == raw

    bare = dense_meta()
    assert bare.training == TrainingRecord() and json.loads(bare.to_json())["training"] == {}
