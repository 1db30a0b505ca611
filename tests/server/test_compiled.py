"""The compiled decode step: token for token the eager step (steering, joins, leaves, seeded sampling), no
recompiles while serving, a self-check that falls back to eager on a mismatch or a compile error, and `/ready` +
`/metrics` saying which path runs. One test compiles for real (inductor); the others use the cheap aot_eager
backend, which traces the same graph."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch

from server.engine.compiled_step import CompiledDecode, CompileFailed
from server.engine.model import EngineConfig, LoadedModel
from server.engine.request import Row, SteerSpec
from server.engine.sampling import SamplingParams
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import TinyWorld, make_vector, save_tiny_model, save_tiny_sae

PROMPTS = ["At a wedding we eat", "Hello", "In the morning people drink mint tea with", "Children play"]


def fresh_engine(world: TinyWorld, max_batch: int = 2) -> LoadedModel:
    """An engine of its own: a compiled runner must not leak into the tests that share `tiny_engine`."""
    return LoadedModel.load(
        EngineConfig(model=str(world.model), sae=(str(world.sae),), device="cpu", max_batch=max_batch)
    )


def scenario(engine: LoadedModel, world: TinyWorld) -> list[list[int]]:
    """Rows with different steering (and one seeded sampler) joining and leaving a 2-slot engine."""
    a = make_vector(world, "demo/a", kind="sparse", seed=1)
    b = make_vector(world, "demo/b", kind="dense", seed=2)
    late = make_vector(world, "demo/late", seed=3, apply="generation")
    rows = [
        (PROMPTS[0], SteerSpec(((a, 4.0),)), SamplingParams(max_new_tokens=9)),
        (PROMPTS[1], SteerSpec(), SamplingParams(max_new_tokens=4)),
        (
            PROMPTS[2],
            SteerSpec(((b, 2.0), (a, -3.0))),
            SamplingParams(max_new_tokens=7, temperature=0.9, seed=5),
        ),
        (PROMPTS[3], SteerSpec(((late, 30.0),)), SamplingParams(max_new_tokens=6)),
        (PROMPTS[1], SteerSpec(((a, 0.0),)), SamplingParams(max_new_tokens=5)),
    ]
    seqs = [Row(engine.encode(prompt=p), params, spec) for p, spec, params in rows]
    batcher = engine.batcher()
    waiting = list(seqs)
    while waiting or batcher.rows:
        if waiting and batcher.free:
            batcher.add([waiting.pop(0)])
        batcher.step()
    return [s.output_ids for s in seqs]


def test_compiled_equals_eager_and_never_recompiles(
    tiny_world: TinyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = fresh_engine(tiny_world)
    eager = scenario(engine, tiny_world)
    status = engine.runner.compile("compiled", "inductor")
    assert status.mode == "compiled" and status.buckets == {2: "compiled", 1: "compiled"}, status
    assert engine.runner.compiled is not None and engine.runner.compiled.ok == [1, 2]
    used: list[int] = []
    real = CompiledDecode.logits

    def counted(self: CompiledDecode, b: int) -> torch.Tensor:
        used.append(b)
        return real(self, b)

    monkeypatch.setattr(CompiledDecode, "logits", counted)
    with torch._dynamo.config.patch(error_on_recompile=True):  # joins, leaves, new configs: contents only
        compiled = scenario(engine, tiny_world)
    assert compiled == eager
    assert set(used) == {1, 2} and len(used) > 10


def test_self_check_falls_back_per_bucket(tiny_world: TinyWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = fresh_engine(tiny_world)
    real = CompiledDecode.logits

    def off_in_bucket_2(self: CompiledDecode, b: int) -> torch.Tensor:
        out = real(self, b)
        return out + 0.5 if b == 2 else out  # an injected mismatch

    monkeypatch.setattr(CompiledDecode, "logits", off_in_bucket_2)
    status = engine.runner.compile("auto", "aot_eager")
    assert status.mode == "partly compiled" and status.buckets[1] == "compiled"
    assert status.buckets[2].startswith("eager: logits differ from eager by 0.5"), status.buckets
    assert engine.runner.compiled is not None and engine.runner.compiled.bucket(2) is None
    with pytest.raises(CompileFailed, match="bucket 2: eager: logits differ"):
        engine.runner.compile("compiled", "aot_eager")

    def broken(ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel for you")

    monkeypatch.setattr(engine.runner, "graph_step", broken)
    status = engine.runner.compile("auto", "aot_eager")
    assert status.mode == "eager" and engine.runner.compiled is None
    assert all("compile failed: RuntimeError: no kernel for you" in why for why in status.buckets.values())
    assert scenario(engine, tiny_world)  # and it still serves, eagerly


def test_ready_and_metrics_say_which_engine_runs(tiny_world: TinyWorld) -> None:
    engine = fresh_engine(tiny_world)
    settings = settings_for(tiny_world, engine="auto", compile_backend="aot_eager", max_batch=2)
    with run_server(settings, engine=engine) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        info: dict[str, Any] = c.get("/ready").json()["engine"]
        assert info["mode"] == "compiled" and info["buckets"] == {"2": "compiled", "1": "compiled"}
        assert info["slots"] == 2 and info["kv_cache_bytes"] > 0 and info["compile_s"] > 0
        assert (info["threads"], info["interop_threads"]) == (
            torch.get_num_threads(),
            torch.get_num_interop_threads(),
        )
        metrics = c.get("/metrics").text
        assert 'steer_engine_compiled{bucket="2"} 1.0' in metrics and "steer_kv_cache_bytes" in metrics
        r = c.post("/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 6, "steer": {"sae:3": 5.0}})
        assert r.status_code == 200, r.text
    eager_settings = settings_for(tiny_world, engine="eager", max_batch=2)
    with run_server(eager_settings, engine=engine) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        info = c.get("/ready").json()["engine"]
        assert info["mode"] == "eager" and info["mode_reason"] == "STEER_ENGINE=eager"
        again = c.post("/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 6, "steer": {"sae:3": 5.0}})
        assert again.json()["text"] == r.json()["text"]


def test_compile_only_fills_a_cache_that_other_weights_of_the_same_shapes_hit(
    tiny_world: TinyWorld, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`steer serve --compile-only` (`compile_only`) over a model and SAE of other weights but the same shapes —
    what the world build's prewarm compiles while its model trains — leaves inductor's cache with every graph the
    real model's start-up then needs: no cache miss the second time."""
    from torch._dynamo.utils import counters

    from server.startup import compile_only

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # set_compile_cache sets it
    cache = str(tmp_path / "cache")
    other = TinyWorld(
        model=save_tiny_model(tmp_path / "model", seed=5),
        sae=save_tiny_sae(tmp_path / "sae", seed=9),
        catalog=tiny_world.catalog,
    )
    common = {"engine": "compiled", "max_batch": 1, "compile_cache_dir": cache}
    torch._dynamo.reset()
    assert compile_only(settings_for(other, **common)).mode == "compiled"
    torch._dynamo.reset()
    counters.clear()
    status = compile_only(settings_for(tiny_world, **common))
    assert status.mode == "compiled" and status.buckets == {1: "compiled"}, status
    assert counters["inductor"]["fxgraph_cache_hit"] > 0
    assert counters["inductor"]["fxgraph_cache_miss"] == 0
