"""The catalog's headline view of a vector's eval record (what `GET /vectors` shows per vector)."""

from __future__ import annotations

from server.routes.vectors import headline


def test_headline_reads_per_strength_tables_at_the_default_strength() -> None:
    record = {
        "data_split": "test",
        "strengths": [0.0, 1.0, 1.5],
        "retention": {"0": 1.0, "1": 0.9, "1.5": 0.7},
        "heldout_nonlocalized_accuracy": {"0": 0.2, "1": 0.5, "1.5": 0.6},
        "unsteered": {"retention": 1.0, "heldout_accuracy": 0.65},
        "best": {"strength": 1.5, "accuracy": 0.6},
    }
    assert headline(record, 1.5) == {
        "data_split": "test",
        "retention@1.5": 0.7,
        "heldout_nonlocalized_accuracy@1.5": 0.6,
        "unsteered_retention": 1.0,
        "unsteered_heldout_accuracy": 0.65,
    }


def test_headline_without_a_matching_strength_keeps_only_scalars() -> None:
    record = {"target": "egypt", "retention": {"0": 1.0, "2": 0.5}}
    assert headline(record, 1.0) == {"target": "egypt"}
    assert headline(record) == {"target": "egypt"}
