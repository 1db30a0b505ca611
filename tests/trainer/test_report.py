"""The demo report end to end on a hand-made mini world (tiny random model): files, layout, numbers."""

from __future__ import annotations

import json

from tests.trainer.kit_tiny import write_mini_world
from trainer.demo.report import DemoConfig, build_report, vector_name
from trainer.demo.summary import DemoReport
from vectors.device import cpu_name
from vectors.io import load_vector


def test_demo_report_files_and_layout(tiny_res, tmp_path):
    write_mini_world(tmp_path)
    cfg = DemoConfig(
        root=str(tmp_path),
        n_countries=2,
        steps=6,
        batch_size=4,
        warmup_steps=2,
        strengths=[0.0, 0.5, 1.0, 2.0],
        progress=False,
    )
    report = build_report(cfg, resources=tiny_res)
    assert report.countries == ["morocco", "egypt"]
    assert report.cpu == cpu_name() and f"Made on {cpu_name()}" in (tmp_path / "report.md").read_text()
    for method in ("caa", "sas", "bipo", "yapo"):
        for country in report.countries:
            name = vector_name(method, country)
            path = tmp_path / "vectors" / f"{name}.safetensors"
            vec = load_vector(path)
            assert vec.meta.method == method and vec.meta.training.target == country
            assert vec.meta.eval["target"] == country  # eval wrote its headline back
            retain = vec.meta.training.retain
            if method in (
                "yapo",
                "bipo",
            ):  # trained against the even half of the neutral facts: 1 fact, 1 pair
                assert retain is not None and retain.pairs == 1 and retain.weight == cfg.retain_weight
            else:
                assert retain is None
    assert (tmp_path / "vectors" / "culture" / "morocco.safetensors").is_file()
    assert (tmp_path / "vectors" / "baselines" / "bipo-egypt.safetensors").is_file()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert json.loads(json.dumps(DemoReport.from_dict(saved).to_dict())) == saved  # what compare resumes from
    assert saved["table7"]["strength_1"]["base"]["mean"].keys() == {"localized", "nonlocalized", "both"}
    assert set(saved["table7"]) == {"default", "strength_1", "best_0.5_to_2"}
    for country in report.countries:  # the default view reads each vector at the strength it is served at
        served = load_vector(tmp_path / "vectors" / f"{vector_name('yapo', country)}.safetensors").meta
        assert saved["table_strengths"]["default"]["yapo"][country] == served.default_strength
        assert served.strength_range[0] <= 0 <= 1.0 <= served.strength_range[1]
        assert saved["effect"]["yapo"][country]["pairs"] > 0  # steer train measured what it made
    assert saved["retention"]["facts"] == 1 and "yapo_gain_points_at_default" in saved["targets"]
    assert set(saved["steps_to_loss"]) == {"0.1", "0.3", "0.5"}
    md = (tmp_path / "report.md").read_text()
    assert "Table 7 analog" in md and "| morocco |" in md
    assert "held-out (odd-numbered) half of the neutral facts" in md and "final YaPO" in md
    for plot in saved["plots"].values():
        assert (tmp_path / plot).stat().st_size > 0


def test_report_in_two_processes_writes_what_one_process_writes(tiny_res, tmp_path):
    """`workers=2` trains and evaluates in child processes: every vector, default strength and number of the
    report equals the in-process run's (each run is seeded on its own)."""
    from tests.trainer.kit_tiny import save_tiny_world_files

    write_mini_world(tmp_path, val_topics=frozenset({"drink"}))
    save_tiny_world_files(tmp_path, tiny_res)
    common = dict(root=str(tmp_path), n_countries=2, steps=6, batch_size=4, warmup_steps=2, progress=False)
    common["strengths"] = [0.0, 0.5, 1.0]
    one = build_report(DemoConfig(out=str(tmp_path / "one"), **common))
    two = build_report(DemoConfig(out=str(tmp_path / "two"), workers=2, **common))
    for key in (
        "table7",
        "table_strengths",
        "served",
        "retention",
        "facts_lost",
        "steps_to_loss",
        "final_loss",
    ):
        assert getattr(two, key) == getattr(one, key), key
    for method in ("caa", "sas", "bipo", "yapo"):
        for country in one.countries:
            rel = f"{vector_name(method, country)}.safetensors"
            a, b = (
                load_vector(tmp_path / "one" / "vectors" / rel),
                load_vector(tmp_path / "two" / "vectors" / rel),
            )
            for part in ("indices", "values", "dense"):
                x, y = getattr(a, part), getattr(b, part)
                assert (x is None and y is None) or x.equal(y), (rel, part)
            assert (a.meta.default_strength, a.meta.strength_range) == (
                b.meta.default_strength,
                b.meta.strength_range,
            )
            for key in ("final_loss", "effect", "data_hash"):
                assert getattr(a.meta.training, key) == getattr(b.meta.training, key), (rel, key)
    assert (tmp_path / "two" / "train-logs" / "report_worker-1.log").is_file()
    eval_one = json.loads((tmp_path / "one" / "eval.json").read_text())
    eval_two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert list(eval_two["vectors"]) == list(eval_one["vectors"])
    for name, entry in eval_one["vectors"].items():  # all but the headline's time of evaluation
        other = eval_two["vectors"][name]
        for key in ("by_strength", "strength_range", "default_strength"):
            assert other[key] == entry[key], (name, key)
        assert {k: v for k, v in other["headline"].items() if k != "evaluated"} == {
            k: v for k, v in entry["headline"].items() if k != "evaluated"
        }
    assert eval_two["unsteered"] == eval_one["unsteered"]
