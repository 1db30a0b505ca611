"""Serving logic shared by /generate and /v1: validate a request, resolve its steering, queue it, wait.

Routes translate HTTP to a `GenerationInput` and back; this module knows the limits and the catalog but no
HTTP framework beyond raising `ApiError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from server.engine.client import EngineClient, NotAccepting, QueueFull
from server.engine.request import UNSTEERED, Event, Request, Row, SteerSpec
from server.engine.sampling import SamplingParams
from server.errors import ApiError, invalid
from server.metrics import Metrics
from server.model_ids import ModelIdError, parse_model_id, steered_id
from server.protocol import AppliedVector, ChatMessage, ModelCard, ModelSteering, Usage
from server.settings import ServerSettings
from vectors.prompts import encode_text

ADHOC = re.compile(r"sae:(?:(\d{1,6}):)?(\d{1,9})")
ADHOC_HELP = (
    "steer on one SAE feature with `sae:<feature>` (or `sae:<layer>:<feature>` when several SAEs are loaded)"
)
SEED_SPAN = 2**64  # seeds are used modulo 2**64 (protocol.Seed64: any 64-bit integer)


@dataclass(frozen=True)
class GenerationInput:
    """A validated request, in engine terms but still with the field names the client used."""

    prompt: str | None
    messages: list[ChatMessage] | None
    steer: Mapping[str, float]
    apply: str | None
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


@dataclass(frozen=True)
class Prepared:
    """What to queue: the engine rows and what to report back."""

    seqs: list[Row]
    applied: list[AppliedVector]
    prompt_tokens: int


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str
    usage: Usage
    applied: list[AppliedVector]
    unsteered_text: str | None = None
    unsteered_finish_reason: str | None = None


class Service:
    """Validation + steering resolution + queueing on top of the engine, scheduler and catalog."""

    def __init__(
        self, engine: EngineClient, catalog: Any, settings: ServerSettings, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.settings = settings
        self.metrics = metrics

    # --- steering ---------------------------------------------------------------------------------------
    def resolve_steer(
        self, steer: Mapping[str, float], apply: str | None, field: str = "steer"
    ) -> tuple[SteerSpec, list[AppliedVector]]:
        """Names → vectors (resolved now, kept for the request's lifetime), strengths checked or clamped.

        `field` is where the names came from: `steer` (errors name `steer.<name>`) or `model` (a steered id).
        """
        limit = self.settings.max_vectors_per_request
        if len(steer) > limit:
            raise invalid(field, f"`{field}` has {len(steer)} vectors; at most {limit} per request")
        pairs: list[tuple[Any, float]] = []
        applied: list[AppliedVector] = []
        for name, requested in steer.items():
            param = f"steer.{name}" if field == "steer" else field
            if not math.isfinite(requested):
                raise invalid(param, f"strength of {name!r} must be a finite number, got {requested}")
            vector, lo, hi = self._lookup(name, param)
            strength = requested
            if not lo <= requested <= hi:
                if self.settings.strength_policy == "reject":
                    raise invalid(
                        param,
                        f"strength {requested} of {name!r} is outside its strength_range [{lo}, {hi}]"
                        " (server policy: reject; clamp with STEER_STRENGTH_POLICY=clamp)",
                    )
                strength = min(max(requested, lo), hi)
            applied.append(
                AppliedVector(
                    name=name,
                    strength=strength,
                    requested_strength=requested,
                    clamped=strength != requested,
                    layer=vector.layer,
                    method=vector.meta.method,
                    space=vector.space,
                    apply=apply or vector.meta.apply,
                )
            )
            if strength != 0.0:  # strength 0 is reported but costs nothing: exactly the unsteered row
                pairs.append((vector, float(strength)))
        spec = SteerSpec(tuple(pairs), apply)
        try:
            self.engine.check_steer(spec)
        except ValueError as exc:
            raise invalid(field, f"incompatible steering: {exc}") from None
        return spec, applied

    # --- model ids ----------------------------------------------------------------------------------------
    @property
    def model_aliases(self) -> tuple[str, ...]:
        """Other names of the base model in /v1 requests: the `--model` value as given (a hub id, a path)."""
        given = self.settings.model
        return (given,) if given != self.engine.name else ()

    def resolve_model(self, model: str, steer: Mapping[str, float]) -> tuple[dict[str, float], str]:
        """The steering a /v1 request asks for, and the field it came from (`model` or `steer`).

        A steered model id names its vectors (a missing strength is the vector's default); it cannot be combined
        with a body `steer`. Another model than this server's is a 404 naming `model`.
        """
        try:
            parsed = parse_model_id(model, self.engine.name, self.model_aliases)
        except ModelIdError as exc:
            raise invalid("model", f"model {model!r}: {exc} (GET /v1/models lists the ids)") from None
        if parsed is None:
            raise ApiError(
                404,
                f"model {model!r} is not served here; this server serves {self.engine.name!r} and its steered "
                f"ids {self.engine.name!r}:<vector>[@<strength>] (GET /v1/models)",
                type="model_not_found",
                param="model",
            )
        if not parsed.steered:
            return dict(steer), "steer"
        if steer:
            raise invalid(
                "model", f"model {model!r} is steered already; give steering in `model` or `steer`, not both"
            )
        resolved: dict[str, float] = {}
        for name, strength in parsed.terms:
            if strength is None:
                vector, _, _ = self._lookup(name, "model")
                strength = float(vector.meta.default_strength)
            resolved[name] = strength
        return resolved, "model"

    def model_cards(self, created: int) -> list[ModelCard]:
        """/v1/models: the base model and one steered id per catalog vector (at its default strength)."""
        base = self.engine.name
        ctx = self.engine.context_length
        cards = [ModelCard(id=base, created=created, root=base, max_model_len=ctx)]
        for vector in sorted(self.catalog.vectors(), key=lambda v: v.name):
            meta = vector.meta
            steering = ModelSteering(
                vector=vector.name,
                strength=meta.default_strength,
                strength_range=meta.strength_range,
                method=meta.method,
                space=vector.space,
                layer=vector.layer,
                apply=meta.apply,
            )
            card_id = steered_id(base, vector.name)
            cards.append(
                ModelCard(
                    id=card_id, created=created, root=base, parent=base, max_model_len=ctx, steer=steering
                )
            )
        return cards

    def _lookup(self, name: str, param: str) -> tuple[Any, float, float]:
        from vectors.errors import InvalidVectorName, UnknownVector

        m = ADHOC.fullmatch(name)
        if m is not None:
            layer = int(m.group(1)) if m.group(1) is not None else None
            try:
                vector = self.engine.adhoc_vector(int(m.group(2)), layer)
            except ValueError as exc:
                raise invalid(param, f"{name!r}: {exc}") from None
            cap = self.settings.adhoc_strength_limit
            return vector, -cap, cap
        if name.startswith("sae:"):
            raise invalid(param, f"malformed ad-hoc vector {name!r}: {ADHOC_HELP}")
        try:
            vector = self.catalog.get(name)
        except (UnknownVector, InvalidVectorName, KeyError, ValueError):
            raise ApiError(
                422,
                f"unknown steering vector {name!r} (GET /vectors lists the catalog; {ADHOC_HELP})",
                param=param,
                type="unknown_vector",
            ) from None
        lo, hi = vector.meta.strength_range
        return vector, float(lo), float(hi)

    # --- requests ---------------------------------------------------------------------------------------
    def prepare(self, req: GenerationInput) -> Prepared:
        """Validate limits and build the engine rows (no forward pass happens here)."""
        spec, applied = self.resolve_steer(req.steer, req.apply, req.steer_field)
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
        spec, applied = self.resolve_steer(reqs[0].steer, reqs[0].apply, reqs[0].steer_field)
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

    def check_room(self, rows: int) -> None:
        """Fail fast (429 / 503) before any work when a request of `rows` rows would be refused anyway."""
        with self._admission_errors():
            self.engine.check_room(rows)

    def submit(self, prepared: Prepared, *, stream: bool = True) -> Request:
        """Queue the rows; 429 when the queue is full, 503 while draining. Without `stream` the request gets
        one event per row, at its end (no per-token text on the engine thread, no per-token event-loop wake-up)."""
        with self._admission_errors():
            return self.engine.submit(prepared.seqs, stream=stream)

    @contextlib.contextmanager
    def _admission_errors(self) -> Iterator[None]:
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        try:
            yield
        except QueueFull as exc:
            self.metrics.failures.labels(reason="overloaded").inc()
            raise ApiError(429, f"{exc}; retry later", type="overloaded", headers=retry) from None
        except NotAccepting as exc:
            raise ApiError(503, str(exc), type="unavailable", headers=retry) from None

    async def run(self, prepared: Prepared, is_disconnected: Callable[[], Any]) -> Outcome:
        """Queue, wait for the end (cancelling the rows if the client goes away or time runs out), summarise."""
        handle = self.submit(prepared, stream=False)
        await self.wait(handle, is_disconnected)
        return self.outcome(prepared, handle)

    async def wait(self, handle: Request, is_disconnected: Callable[[], Any]) -> None:
        """Until every row ended (or one failed: `ApiError`); rows are cancelled if the client goes away or
        time runs out."""
        waiter = asyncio.ensure_future(_settle(handle))
        deadline = self.deadline(handle)
        try:
            while not waiter.done():
                done, _ = await asyncio.wait({waiter}, timeout=_poll(deadline))
                if done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise self.time_out(handle)
                if not handle.cancelled and await is_disconnected():
                    self.cancel(handle)
            await waiter
        except (asyncio.CancelledError, ApiError):
            self.cancel(handle)
            waiter.cancel()
            raise
        check(handle)

    async def events(self, handle: Request) -> AsyncIterator[Event]:
        """The events of a queued request (every row's deltas and end); the failure of any row, or the 504
        past the deadline, as an `ApiError` (the other rows are then already stopped)."""
        deadline = self.deadline(handle)
        stream = handle.stream()
        while True:
            try:
                if deadline is None:
                    event = await stream.__anext__()
                else:
                    left = max(0.0, deadline - time.monotonic())
                    event = await asyncio.wait_for(stream.__anext__(), left)
            except StopAsyncIteration:
                check(handle)
                return
            except asyncio.TimeoutError:
                raise self.time_out(handle) from None
            check(handle)
            yield event

    def deadline(self, handle: Request) -> float | None:
        """`time.monotonic()` by which the request must be done (None: no limit)."""
        limit = self.settings.request_timeout_s
        return handle.submitted + limit if limit > 0 else None

    def time_out(self, handle: Request) -> ApiError:
        """Stop the rows of a request that ran past the deadline; the 504 to answer with."""
        if not handle.cancelled:
            self.metrics.failures.labels(reason="timeout").inc()
            handle.cancel()
        limit = self.settings.request_timeout_s
        return ApiError(
            504,
            f"request did not finish within {limit:g} s (server limit STEER_REQUEST_TIMEOUT_S); "
            "ask for fewer tokens or retry later",
            type="timeout",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    def cancel(self, handle: Request) -> None:
        """Stop the rows of a request whose client went away."""
        if not handle.cancelled and not all(s.finished for s in handle.seqs):
            self.metrics.disconnects.inc()
        handle.cancel()

    @staticmethod
    def outcome(prepared: Prepared, handle: Request) -> Outcome:
        """Final result, or the ApiError of a failed row."""
        check(handle)
        main = handle.seqs[0]
        twin = handle.seqs[1] if len(handle.seqs) > 1 else None
        n = len(main.output_ids)
        return Outcome(
            text=main.text,
            finish_reason=main.finish_reason or "stop",
            usage=Usage(
                prompt_tokens=prepared.prompt_tokens,
                completion_tokens=n,
                total_tokens=prepared.prompt_tokens + n,
            ),
            applied=prepared.applied,
            unsteered_text=twin.text if twin is not None else None,
            unsteered_finish_reason=twin.finish_reason if twin is not None else None,
        )

    @staticmethod
    def usage(prepared: Prepared, handle: Request) -> Usage:
        """Usage of a request of several choices: each prompt once, the tokens of every choice."""
        completion = sum(len(s.output_ids) for s in handle.seqs)
        return Usage(
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=completion,
            total_tokens=prepared.prompt_tokens + completion,
        )


def derived_seed(seed: int | None, choice: int) -> int | None:
    """Seed of choice `choice` of a seeded request: seed + choice, wrapped into the range a request accepts."""
    return None if seed is None else (seed + choice) % SEED_SPAN


def check(handle: Request) -> None:
    """Raise the ApiError of a request whose row failed: a request answers whole or not at all."""
    if handle.error is not None:
        raise failure(handle.error)


async def _settle(handle: Request) -> None:
    """Until every row ended, or one failed (the output stage has then stopped the others)."""
    async for _ in handle.stream():
        pass


def _poll(deadline: float | None, every: float = 0.25) -> float:
    """Seconds to wait before the next disconnect / deadline check."""
    if deadline is None:
        return every
    return max(0.0, min(every, deadline - time.monotonic()))


def failure(error: BaseException | None) -> ApiError:
    """The ApiError for a row that failed inside the engine."""
    if isinstance(error, torch.OutOfMemoryError):
        return ApiError(503, "out of memory while generating; retry later", type="out_of_memory")
    name = type(error).__name__ if error is not None else "unknown"
    return ApiError(500, f"generation failed ({name})", type="internal_error")


@contextlib.asynccontextmanager
async def cancel_on_exit(service: Service, handle: Request) -> AsyncIterator[None]:
    """Cancel the rows when a stream ends early (client gone, error)."""
    try:
        yield
    finally:
        if not all(s.finished for s in handle.seqs):
            service.cancel(handle)
