"""The catalog's headline view of a vector's eval record (what `GET /vectors` shows per vector)."""

from __future__ import annotations

from server.serving.vectors import headline
from vectors.eval_record import EvalRecord, RetentionFacts


def _record() -> EvalRecord:
    return EvalRecord(
        target="egypt",
        data_split="test",
        selected_on="val",
        strengths=(0.0, 1.0, 1.5),
        heldout_accuracy={0.0: 0.65, 1.0: 0.7, 1.5: 0.75},
        heldout_nonlocalized_accuracy={0.0: 0.2, 1.0: 0.5, 1.5: 0.6},
        selection_accuracy={0.0: 0.6, 1.0: 0.7, 1.5: 0.7},
        retention={0.0: 1.0, 1.0: 0.9, 1.5: 0.7},
        retention_facts=RetentionFacts(10, {0.0: 0, 1.0: 1, 1.5: 3}, {0.0: (0.72, 1.0), 1.0: (0.6, 0.98)}),
        unsteered_heldout_accuracy=0.65,
        unsteered_retention=1.0,
        trained_strength=1.0,
        evaluated="2026-12-01T00:00:00Z",
    )


def test_the_record_round_trips_through_its_dict() -> None:
    record = _record()
    assert EvalRecord.from_dict(record.to_dict()) == record


def test_headline_reads_the_record_at_the_default_strength() -> None:
    got = headline(_record().to_dict(), 1.0)
    assert got["retention@1"] == 0.9 and got["heldout_nonlocalized_accuracy@1"] == 0.5
    assert got["retention_low@1"] == 0.6 and got["retention_high@1"] == 0.98 and got["facts_lost@1"] == 1
    assert got["selected_on"] == "val" and got["retention_facts"] == 10 and got["trained_strength"] == 1.0
    assert got["unsteered_retention"] == 1.0 and got["unsteered_heldout_accuracy"] == 0.65
    assert "retention@1.5" not in got and "retention_low@1.5" not in headline(_record().to_dict(), 1.5)


def test_headline_of_an_older_record_and_of_a_broken_one() -> None:
    older = {  # what `steer eval` wrote before the record was typed: no selected_on, no retention_facts
        "data_split": "test",
        "target": "egypt",
        "strengths": [0.0, 1.0],
        "retention": {"0": 1.0, "1": 0.9},
        "heldout_accuracy": {"0": 0.5, "1": 0.6},
        "unsteered": {"retention": 1.0, "heldout_accuracy": 0.5},
        "best_nonlocalized_0.5_to_2": {"strength": 1.0, "accuracy": 0.6},
    }
    got = headline(older, 1.0)
    assert got["retention@1"] == 0.9 and got["heldout_accuracy@1"] == 0.6 and got["selected_on"] == "test"
    assert headline({}, 1.0) == {}
    assert "retention" in headline({"target": "x", "data_split": "test", "retention": [1, 2]})["unreadable"]
