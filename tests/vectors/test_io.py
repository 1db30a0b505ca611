"""Vector files: round trip, atomic writes, and a typed error naming the file for every kind of bad file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.vectors.kit_vectors import dense_meta, random_code, sae_meta
from vectors.errors import VectorFileError, VectorFormatError
from vectors.io import load_vector, read_metadata, save_vector, update_metadata
from vectors.metadata import VectorMetadata
from vectors.vector import SteeringVector


def _sparse() -> SteeringVector:
    return SteeringVector.from_code(
        sae_meta("culture/morocco"), random_code(64, 10, seed=0, dtype=torch.float32)
    )


def test_sparse_round_trip(tmp_path: Path) -> None:
    v = _sparse()
    path = save_vector(v, tmp_path / "culture" / "morocco.safetensors")
    back = load_vector(path)
    assert back == v and hash(back) == hash(v)
    assert torch.equal(back.indices, v.indices) and torch.equal(back.values, v.values)  # type: ignore[arg-type]
    assert back.meta == v.meta and back.nnz == 10 and back.space == "sae" and back.layer == 1
    assert torch.equal(back.code_vector(64), v.code_vector())
    assert read_metadata(path) == v.meta
    assert [p.name for p in path.parent.iterdir()] == ["morocco.safetensors"]  # no temp file left behind


def test_dense_round_trip_and_header_is_plain_json(tmp_path: Path) -> None:
    v = SteeringVector.dense_vector(dense_meta("style/formal"), torch.linspace(-1, 1, 16))
    path = save_vector(v, tmp_path / "v.safetensors")
    back = load_vector(path)
    assert torch.equal(back.dense, v.dense) and back.nnz == 16  # type: ignore[arg-type]
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    steer = json.loads(header["__metadata__"]["steer"])
    assert steer["space"] == "dense" and steer["hook_name"] == "blocks.1.hook_resid_post"
    assert set(header) == {"__metadata__", "vector"}


def test_update_metadata_is_validated_and_atomic(tmp_path: Path) -> None:
    path = save_vector(_sparse(), tmp_path / "m.safetensors")
    new = update_metadata(path, eval={"accuracy": 0.9}, default_strength=1.5)
    assert read_metadata(path).eval == {"accuracy": 0.9} and new.meta.default_strength == 1.5
    with pytest.raises(VectorFormatError, match="method"):
        update_metadata(path, method="magic")
    assert read_metadata(path).method == "yapo"  # a rejected update leaves the file untouched


def test_sparse_constructor_sorts_and_fingerprint_ignores_eval() -> None:
    meta = sae_meta()
    v = SteeringVector.sparse(meta, torch.tensor([9, 2, 5]), torch.tensor([1.0, -2.0, 3.0]))
    assert v.indices.tolist() == [2, 5, 9] and v.values.tolist() == [-2.0, 3.0, 1.0]  # type: ignore[union-attr]
    assert v.with_meta(eval={"x": 1}) == v
    assert v.with_meta(apply="prompt") != v  # a field that changes how it acts changes identity


# ---------------------------------------------------------------------------------------------------------------
# bad files: each a (writer, expected problem) pair


def _meta_json(**changes: Any) -> str:
    raw = json.loads(sae_meta("bad/one").to_json())
    raw.update(changes)
    return json.dumps(raw)


def _write(path: Path, tensors: dict[str, torch.Tensor], steer: str | None) -> None:
    save_file(tensors, str(path), metadata=None if steer is None else {"steer": steer})


GOOD_IDX = torch.tensor([1, 4, 7])
GOOD_VAL = torch.tensor([0.5, -1.0, 2.0])

BAD_FILES: dict[str, tuple[Any, str]] = {
    "no_metadata": (lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, None), "no 'steer'"),
    "bad_json": (lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, "{nope"), "not valid JSON"),
    "json_list": (lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, "[1]"), "JSON object"),
    "bad_method": (
        lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, _meta_json(method="x")),
        "method",
    ),
    "extra_key": (lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, _meta_json(foo=1)), "foo"),
    "bad_name": (
        lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, _meta_json(name="A/B")),
        "name",
    ),
    "hook_mismatch": (
        lambda p: _write(
            p, {"indices": GOOD_IDX, "values": GOOD_VAL}, _meta_json(hook_name="model.layers.2")
        ),
        "does not refer to layer",
    ),
    "missing_sae": (
        lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, _meta_json(sae=None)),
        "sae",
    ),
    "layer_out_of_range": (
        lambda p: _write(
            p, {"indices": GOOD_IDX, "values": GOOD_VAL}, _meta_json(layer=9, hook_name="model.layers.9")
        ),
        "out of range",
    ),
    "bad_range": (
        lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL}, _meta_json(strength_range=[2, 1])),
        "strength_range",
    ),
    "wrong_tensor_names": (lambda p: _write(p, {"vector": GOOD_VAL}, _meta_json()), "needs tensors"),
    "extra_tensor": (
        lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL, "x": GOOD_VAL.clone()}, _meta_json()),
        "needs tensors",
    ),
    "int32_indices": (
        lambda p: _write(p, {"indices": GOOD_IDX.int(), "values": GOOD_VAL}, _meta_json()),
        "int64",
    ),
    "float64_values": (
        lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL.double()}, _meta_json()),
        "float32",
    ),
    "length_mismatch": (
        lambda p: _write(p, {"indices": GOOD_IDX, "values": GOOD_VAL[:2]}, _meta_json()),
        "equal length",
    ),
    "two_dim": (
        lambda p: _write(p, {"indices": GOOD_IDX[None], "values": GOOD_VAL[None]}, _meta_json()),
        "1-D",
    ),
    "unsorted": (
        lambda p: _write(p, {"indices": torch.tensor([4, 1, 7]), "values": GOOD_VAL}, _meta_json()),
        "sorted",
    ),
    "duplicate": (
        lambda p: _write(p, {"indices": torch.tensor([1, 1, 7]), "values": GOOD_VAL}, _meta_json()),
        "unique",
    ),
    "index_too_big": (
        lambda p: _write(p, {"indices": torch.tensor([1, 4, 64]), "values": GOOD_VAL}, _meta_json()),
        "d_sae",
    ),
    "negative_index": (
        lambda p: _write(p, {"indices": torch.tensor([-1, 4, 7]), "values": GOOD_VAL}, _meta_json()),
        "range",
    ),
    "nan": (
        lambda p: _write(
            p, {"indices": GOOD_IDX, "values": torch.tensor([0.5, float("nan"), 1.0])}, _meta_json()
        ),
        "NaN",
    ),
    "inf": (
        lambda p: _write(
            p, {"indices": GOOD_IDX, "values": torch.tensor([0.5, float("inf"), 1.0])}, _meta_json()
        ),
        "infinite",
    ),
    "dense_wrong_length": (
        lambda p: _write(p, {"vector": torch.zeros(15)}, dense_meta("bad/dense").to_json()),
        "hidden_size",
    ),
    "garbage": (
        lambda p: p.write_bytes(b"\x00\x01not a safetensors file at all"),
        "not a readable safetensors",
    ),
    "pickle": (lambda p: torch.save({"vector": torch.zeros(16)}, p), "not a readable safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_raises_typed_error_naming_file(case: str, tmp_path: Path) -> None:
    writer, problem = BAD_FILES[case]
    path = tmp_path / f"{case}.safetensors"
    writer(path)
    with pytest.raises(VectorFormatError) as info:
        load_vector(path)
    err = info.value
    assert isinstance(err, VectorFileError) and err.path == str(path)
    assert str(err).startswith(f"{path}: ") and problem in err.problem, err.problem


def test_truncated_file(tmp_path: Path) -> None:
    path = save_vector(_sparse(), tmp_path / "t.safetensors")
    data = path.read_bytes()
    for cut in (4, 20, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(VectorFormatError, match=str(path.name)):
            load_vector(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VectorFormatError, match="cannot read"):
        load_vector(tmp_path / "absent.safetensors")


def test_metadata_schema_round_trips_through_json() -> None:
    meta = sae_meta(training={"data_hash": "abc", "lr": 5e-4, "final_loss": 0.05}, apply="generation")
    assert VectorMetadata.model_validate_json(meta.to_json()) == meta
    with pytest.raises(ValueError):
        VectorMetadata.model_validate({**json.loads(meta.to_json()), "space": "dense"})
