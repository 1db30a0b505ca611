"""Cache the frozen part of the forward: block-L outputs (and their SAE codes) per training row.

Blocks 0..L are frozen and the steering acts on the output of block L, so h_L of every training row
is a constant. `LowerLayerCache` computes it once, then during training replaces blocks 0..L-1 by
the identity and block L by a lookup of the cached rows (left-padded like the batch), so a step only
runs blocks L+1.. (forward and backward). The steering hook on block L still fires as usual.
With a `coder` the SAE codes z = Enc(h_L) are cached too (YaPO then skips the encoder). The same
unsteered forward yields the π_0 response log-probs (`logprobs`, in row order), so the cache costs no
pass over the data beyond the one computing π_0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from trainer.logprobs import make_batch, response_logprobs
from vectors.hooks import decoder_layers


class LowerLayerCache:
    """Per-row block-L outputs [len_i, d] (and optional codes [len_i, d_sae]) for a fixed list of rows."""

    def __init__(
        self,
        model: Any,
        layer: int,
        rows: Sequence[tuple[Sequence[int], Sequence[int]]],
        *,
        coder: Any | None = None,
        batch_rows: int = 64,
    ) -> None:
        self.model = model
        self.layer = layer
        self.coder = coder
        self.hidden: list[Tensor] = []
        self.codes: list[Tensor] | None = [] if coder is not None else None
        self._tuple_output = False
        self.current: Tensor | None = None
        self.current_codes: Tensor | None = None
        logprobs: list[Tensor] = []
        device = next(model.parameters()).device
        block = decoder_layers(model)[layer]
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            batch = make_batch(chunk).to(device)
            store: list[Any] = []
            handle = block.register_forward_hook(lambda _m, _a, out, store=store: store.append(out))
            try:
                with torch.no_grad():
                    logprobs.append(response_logprobs(model, batch).cpu())
            finally:
                handle.remove()
            out = store[0]
            self._tuple_output = not isinstance(out, Tensor)
            h = (out if isinstance(out, Tensor) else out[0]).detach()
            for i, (p, r) in enumerate(chunk):
                n = len(p) + len(r)
                row = h[i, h.shape[1] - n :]
                self.hidden.append(row.clone())
                if self.codes is not None:
                    with torch.no_grad():
                        self.codes.append(coder.encode(row).detach().clone())
        # the same unsteered forward gives the π_0 response log-probs: one pass over the data for both
        self.logprobs = torch.cat(logprobs)

    def assemble(self, row_ids: Sequence[int], width: int) -> None:
        """Set the left-padded cached activations (and codes) for the next forward's batch rows."""
        first = self.hidden[row_ids[0]]
        out = first.new_zeros(len(row_ids), width, first.shape[-1])
        for i, r in enumerate(row_ids):
            h = self.hidden[r]
            out[i, width - h.shape[0] :] = h
        self.current = out
        if self.codes is not None:
            z0 = self.codes[row_ids[0]]
            zs = z0.new_zeros(len(row_ids), width, z0.shape[-1])
            for i, r in enumerate(row_ids):
                z = self.codes[r]
                zs[i, width - z.shape[0] :] = z
            self.current_codes = zs

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the context blocks 0..L-1 are skipped and block L returns the assembled rows."""
        blocks = decoder_layers(self.model)
        wrap = (lambda h: (h,)) if self._tuple_output else (lambda h: h)

        def skip(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            return wrap(hidden_states)

        def lookup(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            assert self.current is not None, "assemble() the batch before the forward"
            if self.current.shape[:2] != hidden_states.shape[:2]:
                raise RuntimeError("cached activations do not match the batch shape")
            return wrap(self.current.to(hidden_states.dtype))

        saved = []
        for i in range(self.layer + 1):
            saved.append((blocks[i], blocks[i].__dict__.get("forward")))
            blocks[i].forward = lookup if i == self.layer else skip
        try:
            yield
        finally:
            for block, original in saved:
                if original is None:
                    del block.forward
                else:
                    block.forward = original


__all__ = ["LowerLayerCache"]
