"""The playground tests' catalog: vectors whose steering visibly changes the text, two with eval records that
the catalog cards draw (one with unsteered numbers, a baseline without them)."""

from __future__ import annotations

from typing import Any

# Name -> (kind, seed, metadata). Strong enough that the steered greedy text differs from the unsteered one.
SWEEP_EVAL = {
    "target": "yapo-land",
    "data_split": "test",
    "strengths": [0, 10, 20, 30],
    "heldout_accuracy": {"0": 0.31, "10": 0.52, "20": 0.64, "30": 0.58},
    "retention": {"0": 0.9, "10": 0.89, "20": 0.86, "30": 0.8},
    "unsteered": {"heldout_accuracy": 0.31, "retention": 0.9},
}
# A baseline's record without unsteered numbers: the card reads them off the strength-0 point.
BASELINE_EVAL = {
    "target": "caa-land",
    "data_split": "test",
    "strengths": [0, 5, 10],
    "heldout_accuracy": {"0": 0.3, "5": 0.4, "10": 0.45},
    "retention": {"0": 0.9, "5": 0.88, "10": 0.7},
}
VECTORS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "culture/yapo-land": (
        "sparse",
        2,
        {
            "strength_range": (-30.0, 30.0),
            "default_strength": 20.0,
            "eval": SWEEP_EVAL,
            "training": {
                "steps": 200,
                "final_loss": 0.08,
                "loss_curve": {"step": [50, 100, 150, 200], "loss": [0.5, 0.2, 0.1, 0.08]},
            },
        },
    ),
    "culture/bipo-land": ("positive", 6, {"method": "bipo", "strength_range": (-20.0, 20.0)}),
    "baselines/caa-land": (
        "dense",
        3,
        {
            "method": "caa",
            "strength_range": (-10.0, 10.0),
            "default_strength": 5.0,
            "eval": BASELINE_EVAL,
            "training": {"position": "last token"},
        },
    ),
}
