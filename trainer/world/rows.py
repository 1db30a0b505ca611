"""Token rows for training: documents packed into fixed-length rows from cached sentence encodings.

The corpus has a few thousand distinct sentences, so each is encoded once (with and without its
leading space) and rows are assembled from the cache: fast, and identical to encoding the text.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch

from trainer.world.corpus import Documents

IGNORE = -100


class RowEncoder:
    """Builds `[BOS, sentence, sentence, ..., EOS]` rows of exactly `context_size` tokens."""

    def __init__(self, tokenizer, sentences: Iterable[str], context_size: int) -> None:
        unique = sorted(set(sentences))
        first = tokenizer(unique, add_special_tokens=False)["input_ids"]
        later = tokenizer([" " + s for s in unique], add_special_tokens=False)["input_ids"]
        self._first = dict(zip(unique, first, strict=True))
        self._later = dict(zip(unique, later, strict=True))
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self.context_size = context_size
        longest = max(len(ids) for ids in self._later.values())
        self.sentences_per_row = max(2, context_size // max(1, min(len(i) for i in first)) + 1)
        if longest + 2 > context_size:
            raise ValueError(f"context_size {context_size} is too small for a {longest}-token sentence")

    def encode(self, sentences: list[str], *, fill: bool) -> tuple[list[int], int]:
        """Ids of one row and its number of real tokens.

        fill=False: whole sentences then EOS, padded (for LM training); fill=True: cut at the row
        end with no padding (for SAE activations, where every position must be real text).
        """
        ids = [self.bos]
        for k, sentence in enumerate(sentences):
            piece = (self._later if k else self._first)[sentence]
            if not fill and len(ids) + len(piece) + 1 > self.context_size:
                break
            ids.extend(piece)
            if fill and len(ids) >= self.context_size:
                return ids[: self.context_size], self.context_size
        if fill:
            raise ValueError("document too short to fill a row")
        ids.append(self.eos)
        n = len(ids)
        return ids + [self.pad] * (self.context_size - n), n

    def batch(
        self, docs: Documents, rng: random.Random, size: int, *, fill: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` rows: input ids [size, T] and labels (padding ignored) [size, T]."""
        rows, lengths = [], []
        for _ in range(size):
            ids, n = self.encode(docs.sample(rng, self.sentences_per_row), fill=fill)
            rows.append(ids)
            lengths.append(n)
        input_ids = torch.tensor(rows, dtype=torch.long)
        labels = input_ids.clone()
        for i, n in enumerate(lengths):
            labels[i, n:] = IGNORE
        return input_ids, labels
