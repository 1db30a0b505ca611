"""The peer suite's pieces (`bench.peer`), without starting either server: its arguments, the skip when vLLM is
missing, the requests it sends and the record it keeps of the passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.commands import config_from_args
from bench.config import DEFAULT_SUITES, BenchConfig
from bench.peer import Pass, record, request_bodies
from bench.report import PEER_KEYS, summarize
from steer_cli import build_parser, main


def test_arguments() -> None:
    args = build_parser().parse_args(
        ["bench", "peer", "--vllm-python", "/opt/v/bin/python", "--vllm-threads-bind", "0", "--repeats", "4"]
    )
    cfg = config_from_args(args)
    assert cfg.suites == ("peer",) and cfg.shape == "gemma3-270m"  # a model folder both servers load
    assert (cfg.vllm_python, cfg.vllm_threads_bind, cfg.repeats) == ("/opt/v/bin/python", "0", 4)
    every = config_from_args(build_parser().parse_args(["bench"]))
    assert "peer" not in every.suites and every.suites == DEFAULT_SUITES
    assert BenchConfig().vllm_threads_bind == "0-1"


def test_skipped_with_a_line_when_vllm_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "peer.json"
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert main(["bench", "peer", "--vllm-python", str(missing), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"peer suite skipped: no Python at {missing}" in captured.err
    assert "make vllm-venv" in captured.err
    result = json.loads(out.read_text())
    assert result["peer"]["status"] == "skipped"
    assert not any(key in result["summary"] for key in PEER_KEYS)
    assert "engine" not in result and "server" not in result


def test_requests_are_greedy_fixed_length_streams() -> None:
    (body,) = request_bodies("m", ["hi"], 7)
    assert body == {
        "model": "m",
        "prompt": "hi",
        "max_tokens": 7,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_record_pairs_rounds_and_compares_texts() -> None:
    def p(clients: int, seconds: float, ttft: float, texts: list[str]) -> Pass:
        return Pass(clients, seconds, 8 * len(texts), [ttft] * len(texts), texts)

    passes = {
        "ours_1": [p(1, 2.0, 0.10, ["a", "b"]), p(1, 4.0, 0.30, ["a", "b"])],
        "vllm_1": [p(1, 1.0, 0.05, ["a", "b"]), p(1, 2.0, 0.10, ["a", "x"])],
        "ours_2": [p(2, 1.0, 0.2, ["a", "b"]), p(2, 1.0, 0.2, ["a", "b"])],
        "vllm_2": [p(2, 2.0, 0.4, ["a", "b"]), p(2, 4.0, 0.4, ["a", "b"])],
    }
    rec = record(passes, 2)
    assert rec["ours_vs_vllm"] == {
        "tok_s_1": 0.5,
        "tok_s_2": 3.0,
        "ttft_1": 2.5,
    }  # medians of per-round ratios
    assert rec["identical_texts"] == {"1": "3/4", "2": "4/4"}
    assert rec["cases"]["ours_1"]["tokens_per_s"]["median"] == 6.0
    summary = summarize({"peer": {"clients": 2, **rec}})
    assert [summary[k] for k in PEER_KEYS] == [0.5, 3.0, 2.5]
