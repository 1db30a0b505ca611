"""A child of the demo report (`trainer.demo.fanout`): train some of its vectors, or evaluate some countries'.

`python -m trainer.demo.report_worker SPEC RESULT`; SPEC: {"config": DemoConfig as a dict, "stage": "train", "jobs":
[[method, country], ...]} or {"config": …, "stage": "eval", "countries": [...]}; RESULT: the TrainResults'
or the EvalReport's JSON.
"""

from __future__ import annotations

import json
import sys

import torch

from trainer.demo.fanout import child_io
from trainer.demo.report import DemoConfig, evaluate_countries, train_jobs
from trainer.resources import load_resources
from vectors.io import write_atomic


def main(argv: list[str]) -> int:
    spec, result = child_io(argv)
    cfg = DemoConfig.from_dict(spec["config"])
    torch.set_num_threads(max(1, cfg.threads))
    res = load_resources(f"{cfg.root}/model", f"{cfg.root}/sae")
    if spec["stage"] == "train":
        out = [r.to_dict() for r in train_jobs(cfg, [tuple(j) for j in spec["jobs"]], res)]
    elif spec["stage"] == "eval":
        out = evaluate_countries(cfg, spec["countries"], res).to_dict()
    else:
        raise SystemExit(f"unknown stage {spec['stage']!r}")
    write_atomic(result, json.dumps(out).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
