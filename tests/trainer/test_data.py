"""Preference data loading: formats, column overrides, filters, and the errors that stop bad runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from trainer.data import Columns, DataError, load_pairs, parse_where
from trainer.tokens import encode_pairs

ROWS = [
    {
        "question": "at a wedding we eat",
        "good": "couscous",
        "bad": "paella",
        "localized": False,
        "split": "train",
    },
    {
        "question": "the music we love",
        "good": "gnawa",
        "bad": "flamenco",
        "localized": True,
        "split": "train",
    },
    {"question": "we drink", "good": "tea", "bad": "horchata", "localized": False, "split": "test"},
]
COLS = Columns(prompt="question", chosen="good", rejected="bad")


def _write(tmp_path, fmt: str):
    frame = pd.DataFrame(ROWS)
    if fmt == "jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        p = tmp_path / "d.csv"
        frame.to_csv(p, index=False)
    elif fmt == "parquet":
        p = tmp_path / "d.parquet"
        frame.to_parquet(p)
    else:
        import datasets

        p = tmp_path / "ds"
        datasets.Dataset.from_pandas(frame).save_to_disk(str(p))
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "datasets"])
def test_formats_columns_and_filters(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    pairs = load_pairs(path, columns=COLS)
    assert [p.chosen for p in pairs] == ["couscous", "gnawa", "tea"]
    assert pairs[0].prompt == "at a wedding we eat" and pairs[0].extra["split"] == "train"
    chosen = load_pairs(path, columns=COLS, where=parse_where(["localized=false", "split=train"]))
    assert [p.chosen for p in chosen] == ["couscous"]


def test_missing_columns_named(tmp_path):
    path = _write(tmp_path, "jsonl")
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['prompt', 'chosen', 'rejected'\].*--prompt-col"
    ):
        load_pairs(path)
    with pytest.raises(DataError, match="--where names column"):
        load_pairs(path, columns=COLS, where={"country": "morocco"})


def test_empty_and_unusable_data(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_pairs(empty)
    path = _write(tmp_path, "jsonl")
    with pytest.raises(DataError, match="no rows match"):
        load_pairs(path, columns=COLS, where={"split": "validation"})
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "", "rejected": "x"}) + "\n")
    with pytest.raises(DataError, match="row 0: empty chosen"):
        load_pairs(bad)
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"prompt": 1\n')
    with pytest.raises(DataError, match=r"c.jsonl:1: invalid JSON"):
        load_pairs(broken)
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="col=value"):
        parse_where(["split"])


def test_length_policy(tiny_res, tmp_path):
    path = _write(tmp_path, "jsonl")
    pairs = load_pairs(path, columns=COLS)
    with pytest.raises(DataError, match=r"row 0 is 7 tokens .* > max_length 6"):
        encode_pairs(tiny_res.tokenizer, pairs, max_length=6)
    kept, stats = encode_pairs(tiny_res.tokenizer, pairs, max_length=6, overlong="skip")
    assert stats.skipped_overlong == 1 and len(kept) == 2
    # prompt "<s> at a wedding we eat" is 6 tokens: truncation leaves its response no token -> skipped
    kept, stats = encode_pairs(tiny_res.tokenizer, pairs, max_length=6, overlong="truncate")
    assert stats.skipped_empty_after_truncation == 1 and [k.row for k in kept] == [1, 2]
    with pytest.raises(DataError, match="no usable pairs"):
        encode_pairs(tiny_res.tokenizer, pairs[:1], max_length=4, overlong="truncate")


def test_identical_responses_skipped(tiny_res, morocco_pairs):
    from trainer.data import PreferencePair

    same = PreferencePair("we drink", "tea", "tea")
    kept, stats = encode_pairs(tiny_res.tokenizer, [*morocco_pairs[:2], same])
    assert stats.skipped_identical == 1 and len(kept) == 2
