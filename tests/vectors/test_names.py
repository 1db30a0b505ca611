"""Vector names: only `[a-z0-9_-]+(/[a-z0-9_-]+)*`, and the name <-> path mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from vectors.errors import InvalidVectorName
from vectors.names import name_from_path, validate_name, vector_path


@pytest.mark.parametrize("name", ["culture/morocco", "a", "safety/jail-break_2", "x/y/z"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../etc/passwd",
        "/abs",
        "a//b",
        "a/b/",
        "Culture/x",
        "a b",
        "a.b",
        "a\\b",
        "a/../b",
        "é",
        "a" * 201,
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidVectorName):
        validate_name(name)
    with pytest.raises(ValueError):  # InvalidVectorName is also a ValueError
        validate_name(name)


def test_vector_path_round_trip(tmp_path: Path) -> None:
    p = vector_path(tmp_path, "culture/morocco")
    assert p == tmp_path / "culture" / "morocco.safetensors"
    assert name_from_path(tmp_path, p) == "culture/morocco"


def test_name_from_path_rejects_outside_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidVectorName):
        name_from_path(tmp_path / "cat", tmp_path / "other" / "x.safetensors")
    with pytest.raises(InvalidVectorName):
        name_from_path(tmp_path, tmp_path / "ns" / "x.pt")
    with pytest.raises(InvalidVectorName):
        name_from_path(tmp_path, tmp_path / "ns" / "Bad Name.safetensors")
