"""Request building: a validated request (`GenerationInput`) to the engine's rows, limits checked.

Prompt or chat formatting (the trainer's), raw text and token ids, stop strings, the token budget against the
model's context and the server's limits, OpenAI choices (n rows per prompt, seeds derived per choice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from server.engine.client import EngineClient
from server.engine.request import UNSTEERED, Row, SteerSpec
from server.engine.sampling import SamplingParams
from server.errors import invalid
from server.protocol.common import AppliedVector, ChatMessage
from server.serving.steering import SteeringResolver
from server.settings import ServerSettings
from vectors.metadata import ApplyPhase
from vectors.prompts import encode_text

SEED_SPAN = 2**64  # seeds are used modulo 2**64 (protocol.Seed64: any 64-bit integer)


@dataclass(frozen=True)
class GenerationInput:
    """A validated request, in engine terms but still with the field names the client used."""

    prompt: str | None
    messages: list[ChatMessage] | None
    steer: Mapping[str, float]
    apply: ApplyPhase | None
    max_new_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: str | list[str] | None
    compare: bool = False
    max_tokens_field: str = "max_new_tokens"  # what to call it in error messages
    steer_field: str = "steer"  # where the steering came from: `steer`, or `model` for a steered model id
    prompt_ids: list[int] | None = None  # token ids, used verbatim (instead of `prompt`)
    raw: bool = False  # `prompt` is raw text to continue (no chat template): /v1/completions
    logprobs: int | None = None  # top alternatives per generated token (None: no log-probs)
    prompt_logprobs: int | None = None  # echo: the prompt tokens' log-probs too
    echo: bool = False  # the answer repeats the prompt: max_new_tokens may be 0 (scoring only)
    ignore_eos: bool = False  # keep generating past end-of-sequence tokens, up to the token limit


@dataclass(frozen=True)
class Prepared:
    """What to queue: the engine rows and what to report back."""

    seqs: list[Row]
    applied: list[AppliedVector]
    prompt_tokens: int


class RequestBuilder:
    """Builds the rows of a request (no forward pass happens here); raises `ApiError` 422s naming the field."""

    def __init__(self, engine: EngineClient, settings: ServerSettings, steering: SteeringResolver) -> None:
        self.engine = engine
        self.settings = settings
        self.steering = steering

    def prepare(self, req: GenerationInput) -> Prepared:
        """Validate limits and build the engine rows (no forward pass happens here)."""
        spec, applied = self.steering.resolve_steer(req.steer, req.apply, req.steer_field)
        row = self._row(req, spec)
        seqs = [row]
        if req.compare:
            if self.settings.max_batch < 2:
                raise invalid(
                    "compare",
                    f"`compare` needs 2 batch rows; this server's max_batch is {self.settings.max_batch}",
                )
            seqs.append(Row(row.prompt_ids, row.sampling, UNSTEERED))
        return Prepared(seqs=seqs, applied=applied, prompt_tokens=len(row.prompt_ids))

    def prepare_choices(self, reqs: list[GenerationInput], n: int) -> Prepared:
        """OpenAI choices: `n` independent rows per prompt, prompt-major, so that row i is choice i.

        `reqs` differ only in their prompt; the steering is resolved once, so every choice sees the same vectors
        even if the catalog reloads meanwhile. Choice j of a prompt samples with `derived_seed(seed, j)`: it equals
        a single request with that seed. `prompt_tokens` counts each prompt once (as OpenAI bills them).
        """
        spec, applied = self.steering.resolve_steer(reqs[0].steer, reqs[0].apply, reqs[0].steer_field)
        seqs: list[Row] = []
        prompt_tokens = 0
        for req in reqs:
            row = self._row(req, spec)
            prompt_tokens += len(row.prompt_ids)
            seqs.append(row)
            for j in range(1, n):
                sampling = dataclasses.replace(row.sampling, seed=derived_seed(row.sampling.seed, j))
                seqs.append(Row(row.prompt_ids, sampling, spec))
        return Prepared(seqs=seqs, applied=applied, prompt_tokens=prompt_tokens)

    def _row(self, req: GenerationInput, spec: SteerSpec) -> Row:
        """The one engine row of a prompt or chat: tokens, sampling (limits checked) and steering."""
        stop = self._stops(req.stop)
        if req.prompt_ids is not None:
            ids = self.checked_ids(req.prompt_ids, "prompt")
        elif req.prompt is not None and req.raw:
            ids = encode_text(self.engine.tokenizer, req.prompt)
            if not ids:
                raise invalid("prompt", "the prompt encodes to no tokens (and this tokenizer adds no BOS)")
        elif req.prompt is not None:
            ids = self.engine.encode(prompt=req.prompt)
        else:
            assert req.messages is not None
            msgs = [m.model_dump() for m in req.messages]
            ids = self.engine.encode(messages=msgs)
        max_new = self._max_new_tokens(len(ids), req.max_new_tokens, req.max_tokens_field, req.echo)
        sampling = SamplingParams(
            max_new_tokens=max_new,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=stop,
            logprobs=req.logprobs,
            prompt_logprobs=req.prompt_logprobs,
            ignore_eos=req.ignore_eos,
        )
        return Row(ids, sampling, spec)

    def check_choices(self, prompts: int, n: int) -> int:
        """Rows of an OpenAI request of `prompts` prompts × `n` choices (422 past the limits).

        Every choice is a batch row and a request's rows are admitted together, so a request may not need
        more rows than `max_batch` (it could never start) nor more choices than `max_choices_per_request`.
        """
        cap = self.settings.max_choices_per_request
        if n > cap:
            raise invalid("n", f"`n` must be <= {cap} (server limit max_choices_per_request), got {n}")
        rows = prompts * n
        if rows > cap:
            raise invalid(
                "prompt",
                f"{prompts} prompts × n={n} make {rows} choices; at most {cap} per request "
                "(server limit max_choices_per_request)",
            )
        if rows > self.settings.max_batch:
            raise invalid(
                "n" if n > 1 else "prompt",
                f"{prompts} prompt(s) × n={n} need {rows} batch rows, all admitted together; "
                f"this server's max_batch is {self.settings.max_batch}",
            )
        return rows

    def _stops(self, stop: str | list[str] | None) -> tuple[str, ...]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > self.settings.max_stop_sequences:
            raise invalid(
                "stop", f"`stop` has {len(stops)} sequences; at most {self.settings.max_stop_sequences}"
            )
        if any(not s for s in stops):
            raise invalid("stop", "`stop` sequences must be non-empty strings")
        return tuple(stops)

    def checked_ids(self, ids: list[int], field: str) -> list[int]:
        """Token ids, each inside the vocabulary (an embedding lookup or a decode past it would fail)."""
        vocab = self.engine.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise invalid(field, f"token id {bad} is outside the vocabulary [0, {vocab})")
        return list(ids)

    def tokenize(
        self, *, prompt: str | None, messages: list[ChatMessage] | None, add_special_tokens: bool = True
    ) -> list[int]:
        """Token ids of a text as /v1/completions encodes it, or of a chat as /v1/chat/completions formats it."""
        tokenizer = self.engine.tokenizer
        if messages is not None:
            return self.engine.encode(messages=[m.model_dump() for m in messages])
        assert prompt is not None
        if add_special_tokens:
            return encode_text(tokenizer, prompt)
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def check_top_logprobs(self, field: str, asked: int | None) -> None:
        """422 naming `field` past the server's top-alternatives limit."""
        cap = self.settings.max_top_logprobs
        if asked is not None and asked > cap:
            raise invalid(field, f"`{field}` must be <= {cap} (server limit max_top_logprobs), got {asked}")

    def _max_new_tokens(self, prompt_tokens: int, asked: int | None, field: str, echo: bool) -> int:
        ctx = self.engine.context_length
        cap = self.settings.max_new_tokens
        room = ctx - prompt_tokens
        if asked == 0 and echo:  # score (or just echo) the prompt, generate nothing
            if room < 0:
                raise invalid("prompt", f"prompt has {prompt_tokens} tokens; the model's context is {ctx}")
            return 0
        if asked == 0:
            raise invalid(field, f"`{field}` 0 (scoring only) needs `echo: true`")
        if room < 1:
            raise invalid(
                "prompt",
                f"prompt has {prompt_tokens} tokens; the model's context is {ctx}, leaving no room to generate",
            )
        if asked is None:
            return min(self.settings.default_max_new_tokens, cap, room)
        if asked > cap:
            raise invalid(field, f"`{field}` must be <= {cap} (server limit), got {asked}")
        if asked > room:
            raise invalid(
                field,
                f"prompt tokens + `{field}` must be <= {ctx} (the model's context); "
                f"got {prompt_tokens} prompt tokens and {field}={asked}",
            )
        return asked


def derived_seed(seed: int | None, choice: int) -> int | None:
    """Seed of choice `choice` of a seeded request: seed + choice, wrapped into the range a request accepts."""
    return None if seed is None else (seed + choice) % SEED_SPAN
