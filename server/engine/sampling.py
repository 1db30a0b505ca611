"""Token choice on the device, vectorised over rows: greedy, temperature, top-k, top-p, each row its own.

Per-slot parameters live in tensors (`Sampler.set` writes a row's), so a batch of mixed rows is one set of tensor
ops and one device→host copy of the chosen ids. Sampling is the Gumbel-max trick with counter-based noise: the
noise of row r at its t-th token is a hash of (seed, t, token id), so a seeded row draws the same tokens alone,
in any batch, in any slot, and after its neighbours leave — and the same code runs inside a captured graph,
where a stateful generator would not advance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    """How one row picks its tokens and when it stops."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top alternatives per generated token (None: no log-probs)
    prompt_logprobs: int | None = None  # the same for the prompt's own tokens (echo)
    ignore_eos: bool = False  # generate past end-of-sequence tokens, up to max_new_tokens (load tools)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def filters(self) -> bool:
        """True when top-k or top-p cut the distribution (they need a sort)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)

    def draw_seed(self) -> int:
        """The seed this row samples with: its own, or a fresh random one."""
        return self.seed if self.seed is not None else random.getrandbits(64)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (values kept below 2^32 in int64, so no product overflows)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def gumbel_noise(
    seed_lo: torch.Tensor, seed_hi: torch.Tensor, step: torch.Tensor, vocab: int
) -> torch.Tensor:
    """Gumbel(0, 1) noise [n, vocab] in float32, a pure function of (seed, step, token id) per row."""
    key = _mix(_mix(seed_lo ^ 0x5BD1E995) ^ seed_hi)
    key = _mix(key ^ _mix((step & _M32) ^ 0x1B873593))
    salt = _mix(key ^ 0x68E31DA4)  # a second key, so that no token's input collapses to a fixed point
    ids = torch.arange(vocab, device=seed_lo.device, dtype=torch.int64)[None, :]
    bits = _mix(_mix(ids ^ key[:, None]) ^ salt[:, None])
    u = ((bits >> 8).to(torch.float32) + 0.5) / float(1 << 24)  # in (0, 1), exact in float32
    return -torch.log(-torch.log(u))


class Sampler:
    """Sampling parameters of every slot as tensors, and the vectorised choice of the next token."""

    def __init__(self, slots: int, device: torch.device) -> None:
        def zeros(kind: torch.dtype) -> torch.Tensor:
            return torch.zeros(slots, dtype=kind, device=device)

        self.temperature = zeros(torch.float32)
        self.top_k = zeros(torch.int64)
        self.top_p = torch.ones(slots, dtype=torch.float32, device=device)
        self.seed_lo = zeros(torch.int64)
        self.seed_hi = zeros(torch.int64)
        self.step = zeros(torch.int64)

    def buffers(self) -> list[torch.Tensor]:
        return [self.temperature, self.top_k, self.top_p, self.seed_lo, self.seed_hi, self.step]

    def set(self, slot: int, params: SamplingParams, seed: int, step: int = 0) -> None:
        self.temperature[slot] = params.temperature
        self.top_k[slot] = min(params.top_k, 1 << 62)  # any k ≥ the vocabulary keeps every token
        self.top_p[slot] = params.top_p
        self.seed_lo[slot] = seed & _M32
        self.seed_hi[slot] = (seed >> 32) & _M32
        self.step[slot] = step

    def move(self, src: int, dst: int) -> None:
        for t in self.buffers():
            t[dst] = t[src]

    def sample(
        self, logits: torch.Tensor, start: int, *, sampled: Sequence[int] = (), filtered: bool = False
    ) -> torch.Tensor:
        """Next ids [n] for slots [start, start + n) from their logits [n, V]; advances their step counters.

        `sampled` lists the rows (offsets into the batch) that sample; the others are greedy and pay only the
        argmax. `filtered` says whether any sampled row uses top-k or top-p (they need a sort over the vocabulary).
        The choice of each row depends on its own logits and parameters only.
        """
        n, vocab = logits.shape
        rows = slice(start, start + n)
        chosen = logits.argmax(dim=-1)
        if sampled:
            pick = torch.tensor(list(sampled), device=logits.device)
            slots = pick + start
            # Shift so the best score is 0 first: a tiny temperature then sends the others to -inf
            # instead of overflowing (NaN).
            scores = (logits if len(sampled) == n else logits[pick]).float()
            scores = (scores - scores.max(dim=-1, keepdim=True).values) / self.temperature[slots].clamp_min(
                1e-30
            ).unsqueeze(1)
            if filtered:
                scores = _filter(scores, self.top_k[slots], self.top_p[slots])
            noise = gumbel_noise(self.seed_lo[slots], self.seed_hi[slots], self.step[slots], vocab)
            chosen[pick] = (scores + noise).argmax(dim=-1)
        self.step[rows] += 1
        return chosen


def _filter(scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Scores with the tokens outside each row's top-k and top-p set to -inf (the best token always stays)."""
    vocab = scores.shape[-1]
    ordered, order = torch.sort(scores, dim=-1, descending=True)
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    kth = ordered.gather(1, (k - 1).unsqueeze(1))
    probs = torch.softmax(ordered, dim=-1)
    # Drop a token when the tokens ranked above it already reach top_p.
    drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p.unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return scores.masked_fill(drop | (scores < kth), float("-inf"))
