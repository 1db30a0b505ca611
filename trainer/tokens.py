"""Tokenise preference pairs with the server's prompt layout, enforcing the length policy.

The prompt goes through `vectors.prompts.format_prompt` and each response through
`vectors.scoring.option_ids`, the same functions the server and the MCQ scorer use, so a vector is
trained on exactly the token layout it is served and evaluated on. Log-probs are later summed over
the response tokens only; an item whose response would keep zero tokens is never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.data import DataError, PreferencePair
from vectors.prompts import format_prompt
from vectors.scoring import option_ids

Overlong = Literal["error", "skip", "truncate"]


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair; `row` is its index in the loaded data (for error messages)."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    row: int


@dataclass
class EncodeStats:
    """What the length policy did: kept items and the skipped ones by reason."""

    kept: int = 0
    skipped_overlong: int = 0
    skipped_empty_after_truncation: int = 0
    skipped_identical: int = 0
    truncated: int = 0
    skipped_rows: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "kept": self.kept,
            "skipped_overlong": self.skipped_overlong,
            "skipped_empty_after_truncation": self.skipped_empty_after_truncation,
            "skipped_identical": self.skipped_identical,
            "truncated": self.truncated,
        }


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    max_length: int = 512,
    overlong: Overlong = "error",
    source: str = "data",
) -> tuple[list[EncodedPair], EncodeStats]:
    """Encode pairs; items longer than `max_length` tokens are an error, skipped, or truncated.

    `truncate` cuts the response tail to fit; a response left with zero tokens is skipped and
    counted. Pairs whose chosen and rejected tokens are identical carry no signal and are skipped.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    stats = EncodeStats()
    out: list[EncodedPair] = []
    for row, pair in enumerate(pairs):
        prompt = tuple(format_prompt(tokenizer, prompt=pair.prompt))
        chosen = tuple(option_ids(tokenizer, pair.prompt, pair.chosen))
        rejected = tuple(option_ids(tokenizer, pair.prompt, pair.rejected))
        if not prompt:
            raise DataError(
                f"{source}: row {row}: the prompt encodes to no tokens (and the model has no BOS)"
            )
        if not chosen or not rejected:
            raise DataError(f"{source}: row {row}: a response encodes to no tokens")
        longest = len(prompt) + max(len(chosen), len(rejected))
        if longest > max_length:
            if overlong == "error":
                raise DataError(
                    f"{source}: row {row} is {longest} tokens (prompt {len(prompt)}, chosen {len(chosen)}, "
                    f"rejected {len(rejected)}) > max_length {max_length}; raise --max-length or pass "
                    "--overlong skip|truncate"
                )
            if overlong == "skip":
                stats.skipped_overlong += 1
                stats.skipped_rows.append(row)
                continue
            room = max_length - len(prompt)
            if room <= 0:
                stats.skipped_empty_after_truncation += 1
                stats.skipped_rows.append(row)
                continue
            chosen, rejected = chosen[:room], rejected[:room]
            stats.truncated += 1
        if chosen == rejected:
            stats.skipped_identical += 1
            stats.skipped_rows.append(row)
            continue
        out.append(EncodedPair(prompt=prompt, chosen=chosen, rejected=rejected, row=row))
    stats.kept = len(out)
    if not out:
        raise DataError(f"{source}: no usable pairs left after the length policy ({stats.as_dict()})")
    return out, stats


__all__ = ["EncodeStats", "EncodedPair", "Overlong", "encode_pairs"]
