"""Steered model ids parse as documented, and a served base id can never make them ambiguous."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.model_ids import ModelIdError, parse_model_id
from server.settings import ServerSettings


def test_ids_parse_into_base_and_terms() -> None:
    assert parse_model_id("w", "w") is not None and not parse_model_id("w", "w").steered
    assert parse_model_id("w:culture/morocco", "w").terms == (("culture/morocco", None),)
    parsed = parse_model_id("w:culture/morocco@0.8+sae:123@-2+sae:1:7", "w")
    assert parsed.terms == (("culture/morocco", 0.8), ("sae:123", -2.0), ("sae:1:7", None))
    assert parse_model_id("org/hub-id:a/b@1e-1", "w", aliases=["org/hub-id"]).terms == (("a/b", 0.1),)
    assert parse_model_id("other:a/b", "w") is None and parse_model_id("ww", "w") is None


@pytest.mark.parametrize("spec", ["", "a@", "a@x", "a@nan", "a@inf", "a+a@2", "a++b", "@2"])
def test_malformed_steering_is_refused(spec: str) -> None:
    with pytest.raises(ModelIdError):
        parse_model_id(f"w:{spec}", "w")


def test_served_name(tmp_path: Path) -> None:
    world = tmp_path / "world"
    (world / "model").mkdir(parents=True)
    plain = ServerSettings(model=str(world / "model"), vectors=str(tmp_path))
    assert plain.served_name == "model"
    (world / "world.json").write_text("{}")
    assert plain.served_name == "culture-world"  # a culture world is named for what it is
    assert ServerSettings(model="google/gemma-2-2b-it", vectors=".").served_name == "gemma-2-2b-it"
    assert ServerSettings(model="x", vectors=".", model_name="mine").served_name == "mine"
    assert ServerSettings(model=str(tmp_path / "a,b=c"), vectors=".").served_name == "a-b-c"
    for bad in ("a:b", "a,b", "a=b", "a@b", "a+b", "a b", ""):
        with pytest.raises(ValidationError):
            ServerSettings(model="x", vectors=".", model_name=bad)
