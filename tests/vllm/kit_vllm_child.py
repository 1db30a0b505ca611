"""vLLM in a child process, on requests from a test: without our plugin, or with it under tensor parallelism.

`python kit_vllm_child.py MODEL REQUESTS.json OUT.json [LAYOUT.json TP]`: each request is {prompt_token_ids,
max_tokens, logprobs, extra_args}; the answer is, per request, the generated ids and each position's
{token id: log-prob}, greedy. Without a layout no plugin loads (`VLLM_PLUGINS` names none): vLLM as it ships,
which the tests compare unsteered rows with (bit for bit) and feed to the fail-closed probe check (a plugin that
did not engage returns exactly this). With a layout: the plugin, `TP` ranks on the CPU (one core each).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(model: str, requests_path: str, out_path: str, layout_path: str = "", tp: str = "1") -> None:
    if not layout_path:
        os.environ["VLLM_PLUGINS"] = "no-plugin"  # a name no entry point has: none loads, ours included
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    else:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(int(tp))))
    from vllm import LLM, SamplingParams

    requests = json.loads(Path(requests_path).read_text())
    extra: dict[str, object] = {}
    if layout_path:
        layout = json.loads(Path(layout_path).read_text())
        extra = {
            "additional_config": layout,
            "tensor_parallel_size": int(tp),
            "distributed_executor_backend": "mp",
            "max_num_batched_tokens": layout["sparse_steer"]["max_tokens"],
        }
    llm = LLM(
        model=model, dtype="float32", max_model_len=256, max_num_seqs=16, enforce_eager=True, seed=0, **extra
    )
    params = [
        SamplingParams(
            max_tokens=r["max_tokens"],
            temperature=0.0,
            ignore_eos=True,
            logprobs=r["logprobs"],
            extra_args=r.get("extra_args"),
        )
        for r in requests
    ]
    outs = llm.generate(
        [{"prompt_token_ids": r["prompt_token_ids"]} for r in requests], params, use_tqdm=False
    )
    answer = [
        {
            "token_ids": list(o.outputs[0].token_ids),
            "logprobs": [
                {str(t): lp.logprob for t, lp in pos.items()} for pos in o.outputs[0].logprobs or []
            ],
        }
        for o in outs
    ]
    Path(out_path).write_text(json.dumps(answer))


if __name__ == "__main__":
    main(*sys.argv[1:6])
