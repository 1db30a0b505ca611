"""`steer bench server --backend vllm` (`bench.backends`) without starting either server: its arguments, the
skip when vLLM is missing, the steered requests it sends and the record it keeps of the passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.backends import case_bodies, case_name, record
from bench.commands import config_from_args
from bench.config import BenchConfig
from bench.peer import Pass
from bench.report import BACKEND_KEYS, summarize, summary_lines
from steer_cli import build_parser, main


def test_arguments() -> None:
    cfg = config_from_args(
        build_parser().parse_args(["bench", "server", "--backend", "vllm", "--repeats", "5"])
    )
    assert (cfg.suites, cfg.backend, cfg.shape, cfg.repeats) == (("server",), "vllm", "gemma3-270m", 5)
    cfg.validate()
    assert config_from_args(build_parser().parse_args(["bench", "server"])).backend == "native"
    gpu = config_from_args(build_parser().parse_args(["bench", "server", "--backend", "vllm", "--gpu"]))
    assert (gpu.device, gpu.dtype, gpu.shape, gpu.suites) == ("cuda", "bfloat16", "gemma3-270m", ("server",))


def test_vllm_backend_is_the_server_suite_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="steer bench server --backend vllm"):
        BenchConfig.real_shape("gemma3-270m", backend="vllm").validate()  # engine, server, hf
    assert main(["bench", "engine", "--backend", "vllm"]) == 2
    assert "steer bench server --backend vllm" in capsys.readouterr().err


def test_skipped_with_a_line_when_vllm_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "backends.json"
    missing = tmp_path / "no-venv" / "bin" / "python"
    argv = ["bench", "server", "--backend", "vllm", "--vllm-python", str(missing), "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"server --backend vllm skipped: no Python at {missing}" in err and "make vllm-venv" in err
    result = json.loads(out.read_text())
    assert result["server"]["status"] == "skipped"
    assert not any(key in result["summary"] for key in BACKEND_KEYS)
    assert "engine" not in result  # no world was loaded for suites that did not run


def test_steered_requests_name_one_vector_each() -> None:
    plain = case_bodies(["a", "b"], 5, steered=False)
    steered = case_bodies(["a", "b"], 5, steered=True)
    assert [b["model"] for b in plain] == ["bench-model", "bench-model"]
    assert [b["model"] for b in steered] == ["bench-model:clients/c000@1", "bench-model:clients/c001@1"]
    assert all(b["ignore_eos"] and b["temperature"] == 0.0 and b["max_tokens"] == 5 for b in steered)
    assert [{**b, "model": "x"} for b in steered] == [{**b, "model": "x"} for b in plain]


def test_record_pairs_rounds_per_engine_and_mode() -> None:
    def p(clients: int, seconds: float, texts: list[str]) -> Pass:
        return Pass(clients, seconds, 8 * len(texts), [seconds / 10] * len(texts), texts)

    # per case: two rounds; vLLM takes twice native's time, steering 1.25× its engine's unsteered time
    passes = {}
    for engine, scale in (("native", 1.0), ("vllm", 2.0)):
        for n in (1, 2):
            for steered in (False, True):
                texts = ["a", "b"] if engine == "native" or steered else ["a", "x"]
                base = scale * (1.25 if steered else 1.0)
                passes[case_name(engine, n, steered)] = [p(n, base, texts), p(n, 2 * base, texts)]
    rec = record(passes, 2)
    r = rec["ratios"]
    assert r["vllm_vs_native_tok_s_1_plain"] == r["vllm_vs_native_tok_s_2_steered"] == 0.5
    assert r["vllm_vs_native_ttft_1_plain"] == 2.0
    assert r["native_steered_vs_plain_tok_s_2"] == r["vllm_steered_vs_plain_tok_s_1"] == 0.8
    assert rec["identical_texts"] == {
        "1_plain": "2/4",
        "1_steered": "4/4",
        "2_plain": "2/4",
        "2_steered": "4/4",
    }
    result = {"server": {"backends": ["native", "vllm"], "clients": 2, "new_tokens": 8, "ready_s": {},
                         "rss_gib": {}, **rec}, "summary": {}}  # fmt: skip
    summary = summarize(result)
    assert [summary[k] for k in BACKEND_KEYS] == [0.5, 0.5, 0.5, 0.8, 0.8]
    machine = {"device_name": "cpu", "device": "cpu", "torch_threads": 1}
    result.update(summary=summary, machine=machine, world={"source": "a folder"}, mode="quick", seconds=1.0)
    assert any(line.startswith("vllm_2_steered") for line in summary_lines(result))
