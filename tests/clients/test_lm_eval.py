"""lm-evaluation-harness (`local-completions`) against the real server: a multiple-choice task written from the
culture world's own files, unsteered and with a steered model id. Its accuracy is `steer eval`'s for the same
vector, strength and items: the server's log-probs are the trainer's scoring."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from steer_cli import main as steer
from tests.clients.kit_culture import COUNTRY, VECTOR, Culture

pytestmark = pytest.mark.slow

STRENGTH = 2.0
SPLIT = "test"
TASK = "culture_mcq"


def write_task(root: Path, out: Path) -> int:
    """An lm-eval task over the world's MCQ items of COUNTRY in SPLIT: prompt → one of the countries' answers."""
    rows = [
        json.loads(line) for line in (root / "data" / "mcq.jsonl").read_text().splitlines() if line.strip()
    ]
    docs = []
    for r in rows:
        if r["country"] == COUNTRY and r["split"] == SPLIT:
            countries = list(r["options"])
            docs.append(
                {
                    "prompt": r["prompt"],
                    "choices": list(r["options"].values()),
                    "gold": countries.index(COUNTRY),
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "items.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {out / 'items.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n"
    )
    return len(docs)


@dataclass(frozen=True)
class LmEvalRun:
    accuracy: float
    loglikelihoods: list[list[float]]  # per document, per choice (lm-eval's own scores)


def lm_eval_run(culture: Culture, tasks: Path, model: str) -> LmEvalRun:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    args = {
        "model": model,
        "base_url": f"{culture.url}/v1/completions",
        "tokenizer_backend": "huggingface",
        "tokenizer": str(culture.root / "model"),
        "add_bos_token": True,  # the world's tokenizer (like Llama's) starts every text with BOS
        "tokenized_requests": True,
        "batch_size": 4,
    }
    out = simple_evaluate(
        model="local-completions",
        model_args=",".join(f"{k}={v}" for k, v in args.items()),
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        bootstrap_iters=0,
        log_samples=True,
    )
    assert out is not None
    docs = sorted(out["samples"][TASK], key=lambda sample: sample["doc_id"])
    scores = [[float(resp[0]) for resp in sample["filtered_resps"]] for sample in docs]
    return LmEvalRun(accuracy=float(out["results"][TASK]["acc,none"]), loglikelihoods=scores)


def steer_eval_accuracy(culture: Culture, out: Path) -> dict[str, float]:
    """`steer eval` of VECTOR at 0 and STRENGTH on SPLIT: {strength: accuracy}."""
    report = out / "report.json"
    code = steer(
        [
            "eval",
            "--model", str(culture.root / "model"),
            "--sae", str(culture.root / "sae"),
            "--catalog", str(culture.catalog),
            "--vectors", VECTOR,
            "--data", str(culture.root / "data" / "mcq.jsonl"),
            "--strengths", f"0,{STRENGTH:g}",
            "--splits", SPLIT,
            "--out", str(report),
            "--no-write-back",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    sweep: dict[str, Any] = json.loads(report.read_text())["vectors"][VECTOR]["by_strength"]
    return {float(k): v["accuracy"][SPLIT]["both"] for k, v in sweep.items()}


def test_lm_eval_accuracy_is_steer_evals(culture: Culture, tmp_path: Path) -> None:
    assert culture.model_id == "culture-world"  # the world's name, not the folder's ("model")
    n = write_task(culture.root, tmp_path / "tasks")
    assert n >= 8
    expected = steer_eval_accuracy(culture, tmp_path)
    plain = lm_eval_run(culture, tmp_path / "tasks", culture.model_id)
    steered = lm_eval_run(culture, tmp_path / "tasks", f"{culture.model_id}:{VECTOR}@{STRENGTH:g}")
    assert plain.accuracy == pytest.approx(expected[0.0], abs=1e-9)
    assert steered.accuracy == pytest.approx(expected[STRENGTH], abs=1e-9)
    print(
        f"lm-eval accuracy: unsteered {plain.accuracy:.4f}, {VECTOR}@{STRENGTH:g} {steered.accuracy:.4f}; "
        f"steer eval {expected}"
    )
    # The steered id really steered. Whether a vector moves an item's arg-max depends on what the world and
    # the vector happened to learn on this CPU; that it moves the log-likelihoods lm-eval scores holds for
    # any non-zero vector, so that is what is checked: every document's scores change.
    assert len(steered.loglikelihoods) == len(plain.loglikelihoods) == n
    for doc, (a, b) in enumerate(zip(plain.loglikelihoods, steered.loglikelihoods, strict=True)):
        assert len(a) == len(b) and a != b, (doc, a, b)
