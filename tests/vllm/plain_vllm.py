"""vLLM without our plugin (a child process: `VLLM_PLUGINS` set so that no plugin loads), on the same requests.

`python plain_vllm.py MODEL REQUESTS.json OUT.json`: each request is {prompt_token_ids, max_tokens, logprobs,
extra_args}; the answer is, per request, the generated ids and each position's {token id: log-prob}. The tests
compare it with the plugin's engine (unsteered rows bit for bit) and feed it to the fail-closed probe check
(a plugin that did not engage returns exactly this).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["VLLM_PLUGINS"] = "no-plugin"  # a name no entry point has: none loads, ours included
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def main(model: str, requests_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    requests = json.loads(Path(requests_path).read_text())
    llm = LLM(model=model, dtype="float32", max_model_len=256, max_num_seqs=16, enforce_eager=True, seed=0)
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
    outs = llm.generate([{"prompt_token_ids": r["prompt_token_ids"]} for r in requests], params)
    answer = [
        {
            "token_ids": list(o.outputs[0].token_ids),
            "logprobs": [
                {str(t): lp.logprob for t, lp in pos.items()} for pos in o.outputs[0].logprobs or []
            ],
        }
        for o in outs
    ]
    with open(out_path, "w") as f:
        json.dump(answer, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
