"""The vLLM plugin: steering installed into the model of every vLLM worker, fed by the model runner.

`register` is the `vllm.general_plugins` entry point: vLLM calls it in every process (front end, engine core,
each worker) before a model runner is built. It wraps V1's `load_model` (`GPUModelRunner`; the CPU runner
overrides it without calling super) and V2's `init_model_state` (called inside V2's `load_model`, right after the
model is built) so that, when the config carries our layout
(`SteerLayout` in `additional_config`), the loaded model gets a `TokenSteering` with one forward hook per local
decoder layer, installed once before vLLM compiles the model (Dynamo inlines hooks present at trace time; the
hooks read only tensors updated in place). V1's `_prepare_inputs` is wrapped to write the per-token slot map of
each forward; V2 uses the model-state class (`server.engine.vllm.model_state`). Without our layout the runners
behave exactly as vLLM's own.

`SteerWorkerExtension` (vLLM's `worker_extension_cls`) gives every worker `sparse_steer_prepare`, which the front
end calls through `collective_rpc` before it submits a steered request: a vector a worker cannot load fails that
request there rather than inside the model step. The method answers its error instead of raising it: vLLM 0.32's
multiprocess executor stops reading replies at the first failed rank, so with tensor parallel ≥ 2 the other ranks'
replies would stay queued and answer the next call (found by `tests/vllm/test_server_tp.py`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from server.engine.vllm.layout import SteerLayout
from server.engine.vllm.tokens import TokenSteering, VectorSource

log = logging.getLogger(__name__)

STEERING_ATTR = "_sparse_steer"  # on the runner and on the model: the worker's TokenSteering
_PATCHED = "_sparse_steer_patched"
PREPARE = "sparse_steer_prepare"  # the worker method the front end calls (`collective_rpc`)


class SteerWorkerExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`): the front end's calls into every worker."""

    model_runner: Any  # the worker's

    def sparse_steer_prepare(self, extra_args: dict[str, Any]) -> str | None:
        """Resolve a request's steering in this worker (`TokenSteering.prepare`): None, or why it cannot be (every
        rank always answers, so the executor reads every rank's reply)."""
        steering = worker_steering(self.model_runner)
        if steering is None:
            return "sparse-steer: steering is not installed in this worker (plugin not loaded?)"
        try:
            steering.prepare(extra_args)
        except Exception as exc:
            log.warning("sparse-steer: %s", exc)
            return f"{type(exc).__name__}: {exc}"
        return None


def worker_steering(runner: Any) -> TokenSteering | None:
    """A worker's TokenSteering: on its V1 runner, or on the model (V2)."""
    held = getattr(runner, STEERING_ATTR, None)
    if held is None:
        held = getattr(getattr(runner, "model", None), STEERING_ATTR, None)
    return held


def register() -> None:
    """Entry point: patch vLLM's model runners (idempotent)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _wrap_load(GPUModelRunner)
    _wrap_prepare_inputs(GPUModelRunner)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a build without the CPU runner
        pass
    else:
        _wrap_load(CPUModelRunner)
    try:
        from vllm.v1.worker.gpu import model_runner as v2
    except ImportError:  # V2 needs GPU-only modules in some builds
        pass
    else:
        _wrap_init_model_state(v2)


def _wrap_load(cls: type) -> None:
    original = cls.__dict__.get("load_model")
    if original is None or getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        install_steering(self)
        return result

    setattr(load_model, _PATCHED, True)
    cls.load_model = load_model  # type: ignore[attr-defined]


def _wrap_init_model_state(module: Any) -> None:
    """V2 picks the model-state class inside its `load_model` (`init_model_state`), so steering is installed
    on the model just before: the model then names our class (`get_model_state_cls`)."""
    original = module.init_model_state
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def init_model_state(vllm_config: Any, model: nn.Module, encoder_cache: Any, device: Any) -> Any:
        install_on_model(vllm_config, model, torch.device(device))
        return original(vllm_config, model, encoder_cache, device)

    setattr(init_model_state, _PATCHED, True)
    module.init_model_state = init_model_state


def _wrap_prepare_inputs(cls: type) -> None:
    original = cls.__dict__["_prepare_inputs"]
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def _prepare_inputs(
        self: Any, scheduler_output: Any, num_scheduled_tokens: Any, *args: Any, **kwargs: Any
    ) -> Any:
        steering = getattr(self, STEERING_ATTR, None)
        if steering is not None:
            feed_v1(self, steering, num_scheduled_tokens)
        return original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)

    setattr(_prepare_inputs, _PATCHED, True)
    cls._prepare_inputs = _prepare_inputs  # type: ignore[attr-defined]


def feed_v1(runner: Any, steering: TokenSteering, num_scheduled_tokens: Any) -> None:
    """The V1 runner's batch (after its reordering) → slots of its requests and the per-token slot map."""
    batch = runner.input_batch
    n = batch.num_reqs
    req_ids = list(batch.req_ids[:n])
    for gone in steering.requests() - set(runner.requests):
        steering.remove(gone)
    for req_id in req_ids:
        params = runner.requests[req_id].sampling_params
        steering.add(req_id, None if params is None else params.extra_args)
    steering.feed(
        req_ids,
        num_scheduled_tokens[:n].tolist(),
        batch.num_computed_tokens_cpu[:n].tolist(),
        batch.num_prompt_tokens[:n].tolist(),
    )


# --------------------------------------------------------------------------------------------------------
# the model side


def install_steering(runner: Any) -> TokenSteering | None:
    """After a V1 runner loaded its model: steering on the model, and the runner's handle for its feeder."""
    steering = install_on_model(runner.vllm_config, runner.model, torch.device(runner.device))
    if steering is not None:
        setattr(runner, STEERING_ATTR, steering)
    return steering


def install_on_model(cfg: Any, model: nn.Module, device: torch.device) -> TokenSteering | None:
    """Build the worker's steering and hook the decoder layers (or nothing, when the config carries no layout
    of ours); the model also names the V2 model-state class that feeds it."""
    layout = SteerLayout.from_config(cfg.additional_config)
    if layout is None:
        return None
    held = getattr(model, STEERING_ATTR, None)
    if held is not None:
        return held  # type: ignore[no-any-return]
    steering = build_steering(cfg, layout, device, cfg.model_config.dtype)
    hook_layers(model, steering)
    setattr(model, STEERING_ATTR, steering)
    from server.engine.vllm.model_state import model_state_class

    model.get_model_state_cls = model_state_class  # type: ignore[assignment]  # V2 asks the model for it
    log.info("sparse-steer: steering %d layers, %d slots", len(steering.layers), layout.slots)
    return steering


def build_steering(cfg: Any, layout: SteerLayout, device: torch.device, dtype: torch.dtype) -> TokenSteering:
    """Load the SAEs and open the catalog in this worker; buffers for every decoder layer of the model."""
    from vectors.catalog import Catalog, model_info_from_config
    from vectors.metadata import ModelRef
    from vectors.sae import load_sae

    hf = cfg.model_config.hf_config
    info = model_info_from_config(hf)
    coders = {}
    for sae in layout.sae:
        coder = load_sae(sae, device=device, dtype=dtype)
        coders[coder.layer] = coder
    catalog = Catalog(Path(layout.vectors), info, coders)
    catalog.refresh()
    model = ModelRef(name=layout.model_name, hidden_size=info.hidden_size, num_layers=info.num_layers)
    source = VectorSource(catalog, coders, model)
    return TokenSteering(range(info.num_layers), coders, info.hidden_size, layout, source, device, dtype)


def decoder_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(global index, layer) of the decoder layers held by this pipeline stage (placeholders skipped)."""
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList):
            return [(i, m) for i, m in enumerate(module) if type(m).__name__ != "PPMissingLayer"]
    raise ValueError(f"{type(model).__name__}: no decoder layer list found")


def hook_layers(model: nn.Module, steering: TokenSteering) -> None:
    for index, layer in decoder_layers(model):
        if index in steering.layers:
            layer.register_forward_hook(_hook(steering, index))


def _hook(steering: TokenSteering, index: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def hook(module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
        hidden, residual = output
        return steering.edit(index, hidden, residual)

    return hook
