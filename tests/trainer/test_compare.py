"""`steer demo compare` on a hand-made mini world (tiny random model): rates chosen on validation topics,
seeds aggregated, runs reused on a second call."""

from __future__ import annotations

import json

from tests.trainer.kit_tiny import write_mini_world
from trainer.demo.compare import CompareConfig, run_compare


def test_compare_chooses_rates_on_validation_and_aggregates_seeds(tiny_res, tmp_path):
    write_mini_world(tmp_path, val_topics=frozenset({"sport"}))
    cfg = CompareConfig(
        root=str(tmp_path),
        seeds=(11, 12),
        lrs={"yapo": (1e-2, 0.3), "bipo": (0.1,)},
        n_countries=2,
        steps=4,
        progress=False,
    )
    result = run_compare(cfg, resources=tiny_res)
    folder = tmp_path / "compare"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["baselines", "lr-0", "lr-1", "seed-12"]
    for m, lrs in (("yapo", (1e-2, 0.3)), ("bipo", (0.1,))):
        info = result["learning_rates"][m]
        tried = info["candidates"]
        assert set(tried) == {f"{lr:g}" for lr in lrs}
        best = max(tried.values())
        assert info["validation"] == best
        assert info["lr"] == min(lr for lr in lrs if tried[f"{lr:g}"] == best)  # ties: the smaller rate
        chosen_run = json.loads((folder / info["folders"]["11"] / "report.json").read_text())
        assert chosen_run["selected_on"] == "val"
    for view in ("strength_1", "default"):
        table = result["table7"][view]
        assert table["yapo"]["mean"]["nonlocalized"]["n"] == 2
        assert table["caa"]["mean"]["nonlocalized"]["n"] == 1
        seed_runs = [
            json.loads((folder / name / "report.json").read_text())
            for name in result["learning_rates"]["bipo"]["folders"].values()
        ]
        values = [r["table7"][view]["bipo"]["egypt"]["both"] for r in seed_runs]
        assert table["bipo"]["egypt"]["both"]["mean"] == sum(values) / 2
    assert all(len(v) == 2 for v in result["steps_to_loss"]["yapo"]["0.5"].values())
    cosines = [c for m in ("yapo", "bipo") for c in result["seed_cosine"][m].values()]
    assert all(-1 <= c <= 1 + 1e-6 for c in cosines), cosines
    md = (folder / "compare.md").read_text()
    assert "| morocco |" in md and "± " in md and "Convergence" in md

    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/report.json")}
    assert run_compare(cfg, resources=tiny_res) == result  # every run reused, nothing retrained
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/report.json")} == stamps
