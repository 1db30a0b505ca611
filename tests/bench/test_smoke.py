"""`steer bench` end to end on a tiny configuration: the pipeline runs and the JSON schema holds (not timings)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
from pathlib import Path

import pytest
import torch

from bench.config import BenchConfig
from bench.report import SCHEMA, SUMMARY_KEYS
from bench.timing import interleave, paired_ratio, percentile
from steer_cli import main


def _positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_smoke_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    assert main(["bench", "--smoke", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the bench restores the process-wide setting

    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # last line: one JSON object
    for key in SUMMARY_KEYS:
        assert _positive(printed[key]), key

    result = json.loads(out.read_text())
    assert result["schema"] == SCHEMA and result["mode"] == "smoke"
    assert result["summary"] == printed
    assert {"device", "device_name", "cpu", "torch_threads"} <= set(result["machine"])
    assert result["versions"]["torch"] and result["versions"]["transformers"]
    assert result["world"]["model"]["hidden_size"] == 32 and result["world"]["saes"][0]["d_sae"] == 64

    cfg = result["config"]
    decode = result["decode"]
    for batch in cfg["batch_sizes"]:
        variants = [r["variant"] for r in decode["cases"] if r["batch"] == batch]
        assert variants[:3] == ["none", "hooks-only", "dense"]
        assert variants.count("fast") == variants.count("reference") == len(cfg["ks"])
    for row in decode["cases"] + decode["mixed"]:
        assert len(row["ms_per_step"]["samples"]) == cfg["repeats"]
        assert _positive(row["decode_tok_s"]["median"]) and _positive(row["overhead"])
    assert [r["variant"] for r in decode["mixed"]] == ["none", "fast", "reference"]
    assert decode["mixed"][1]["distinct_configs"] == cfg["mixed_batch"]
    for check in decode["check"].values():  # the fast path and the reference steer the same way
        assert check["fast_vs_reference_max_abs"] < 1e-4 < check["steered_vs_unsteered_max_abs"]

    server = result["server"]
    assert set(server["modes"]) == {"batched", "batched_unsteered", "serial"}
    assert server["modes"]["serial"]["max_batch"] == 1
    assert server["distinct_vectors"] == cfg["clients"]
    for mode in server["modes"].values():
        assert mode["tokens_per_round"] == cfg["clients"] * cfg["server_new_tokens"]
        assert mode["latency_ms"]["p50"] <= mode["latency_ms"]["p99"]

    engine = result["engine"]
    assert engine["engine"]["mode"] == "compiled" and engine["served"] == "compiled"
    assert set(engine["tok_s"]) >= {"eager_b1", "compiled_b1", "eager_b3_mixed", "compiled_b3_mixed"}

    join = result["join"]
    assert join["running_rows"] == cfg["clients"] - 1 and join["long_context"] > join["short_context"]
    assert len(join["join_ms"]["long"]["samples"]) == cfg["repeats"]

    hf = result["hf"]  # HF generate with a forward hook vs the engine, at batch 1 and `clients`
    assert set(hf["tok_s"]) == {"engine_b1", "hf_b1", f"engine_b{cfg['clients']}", f"hf_b{cfg['clients']}"}

    train = result["train"]
    assert train["status"] == "ok" and set(train["modes"]) == {"fast", "reference"}
    assert _positive(train["fast_vs_reference"])


def test_one_suite_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--smoke", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["overhead_b1"] is None and _positive(printed["train_fast_vs_reference"])
    assert "decode" not in json.loads(out.read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_mode_without_cuda_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--gpu", "--out", str(tmp_path / "gpu.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()


def test_gpu_code_path_on_a_shrunk_gemma_config() -> None:
    """The --gpu world (Gemma-2 config, two SAE widths) built small on CPU, decoded through every case."""
    from bench.decode import run_decode
    from bench.world import load_world

    cfg = BenchConfig.gpu(
        device="cpu",
        dtype="float32",
        threads=1,
        repeats=1,
        warmup=0,
        batch_sizes=(1,),
        ks=(4,),
        prompt_len=4,
        new_tokens=2,
        ttft_prefills=1,
        mixed_batch=2,
        gpu_sae_widths=(32, 64),
        other_sae_ks=(8,),
        extra={
            "vocab_size": 512,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sae_layer": 12,
        },
    )
    world = load_world(cfg)
    assert type(world.model).__name__ == "Gemma2ForCausalLM"
    assert [s.coder.d_sae for s in world.saes] == [32, 64] and world.layer == 1
    decode = run_decode(world, cfg)
    fast = [(r["sae"], r["vector"]) for r in decode["cases"] if r["variant"] == "fast"]
    assert fast == [("w32", "k4"), ("w64", "k8")]
    assert all(c["fast_vs_reference_max_abs"] < 1e-4 for c in decode["check"].values())


def test_timing_helpers() -> None:
    calls: list[str] = []
    out = interleave({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3, 1)
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rotating rounds
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
