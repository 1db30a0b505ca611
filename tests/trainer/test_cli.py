"""`steer train` and `steer eval` through the real command line on files (tiny model + SAE on disk)."""

from __future__ import annotations

import json

from steer_cli import main
from tests.trainer.kit_tiny import COUNTRIES, TOPICS, save_tiny_world_files, tiny_pairs
from vectors.io import read_metadata


def test_train_then_eval_cli(tiny_res, tmp_path, capsys):
    model, sae = save_tiny_world_files(tmp_path, tiny_res)
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"q": p.prompt, "good": p.chosen, "bad": p.rejected, "split": "train"} for p in tiny_pairs("egypt")
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        json.dumps({"prompt": "people drink", "options": ["tea", "paella"], "answer": "tea"}) + "\n"
    )
    catalog = tmp_path / "vectors"
    rc = main(
        [
            "train",
            "--method",
            "yapo",
            "--retain",
            str(facts),
            "--retain-weight",
            "0.5",
            "--retain-margin",
            "1",
            "--model",
            model,
            "--sae",
            sae,
            "--data",
            str(data),
            "--prompt-col",
            "q",
            "--chosen-col",
            "good",
            "--rejected-col",
            "bad",
            "--where",
            "split=train",
            "--name",
            "culture/egypt",
            "--out",
            str(catalog),
            "--max-steps",
            "4",
            "--lr",
            "0.05",
            "--no-progress",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["steps"] == 4 and summary["data"]["kept"] == len(rows)
    effect = summary[
        "effect"
    ]  # steer train says what the vector does at strength 1, and if that is too little
    assert 0 < effect["pairs"] <= len(rows) and effect["shift_norm"] > 0 and effect["residual_norm"] > 0
    assert effect["weak"] == (effect["margin_gain"] < 0.1)
    assert "effect at strength 1" in captured.err and ("too weak" in captured.err) == effect["weak"]
    meta = read_metadata(catalog / "culture" / "egypt.safetensors")
    assert meta.method == "yapo" and meta.sae.source == sae and meta.training.where == {"split": "train"}
    retain = meta.training.retain
    assert retain is not None and (retain.data, retain.pairs, retain.weight, retain.margin) == (
        "facts.jsonl",
        1,
        0.5,
        1.0,
    )

    mcq = tmp_path / "mcq.jsonl"
    items = [
        {
            "prompt": f"we love the {t}",
            "options": dict(zip(COUNTRIES, a, strict=True)),
            "country": "egypt",
            "topic": t,
            "localized": False,
            "split": "test",
        }
        for t, a in TOPICS.items()
    ]
    mcq.write_text("".join(json.dumps(r) + "\n" for r in items))
    out = tmp_path / "eval.json"
    rc = main(
        [
            "eval",
            "--model",
            model,
            "--sae",
            sae,
            "--catalog",
            str(catalog),
            "--vectors",
            "culture/egypt",
            "--data",
            str(mcq),
            "--strengths",
            "0,1,2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["vectors"]["culture/egypt"]["by_strength"]) == {"0", "1", "2"}
    assert read_metadata(catalog / "culture" / "egypt.safetensors").eval["target"] == "egypt"


def test_train_cli_reports_data_errors(tmp_path, capsys):
    data = tmp_path / "pairs.csv"
    data.write_text("prompt,answer\nhello,world\n")
    rc = main(
        [
            "train",
            "--method",
            "bipo",
            "--model",
            "unused",
            "--layer",
            "0",
            "--data",
            str(data),
            "--name",
            "x/y",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2
    assert "missing column(s) ['chosen', 'rejected']" in capsys.readouterr().err


def test_train_cli_reports_retention_data_errors(tiny_res, tmp_path, capsys):
    model, sae = save_tiny_world_files(tmp_path, tiny_res)
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
            for p in tiny_pairs("egypt")[:4]
        )
    )
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        json.dumps({"prompt": "people drink", "options": ["tea", "paella"], "answer": "milk"}) + "\n"
    )
    args = ["train", "--method", "yapo", "--model", model, "--sae", sae, "--data", str(data)]
    rc = main([*args, "--name", "x/y", "--out", str(tmp_path / "v"), "--retain", str(facts), "--no-progress"])
    assert rc == 2
    assert "facts.jsonl: row 0: the answer must be one of at least two options" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
