"""V2 model runner (vLLM's GPU default): the model-state hook that feeds the steering buffers.

V2 asks the model for its model-state class (`get_model_state_cls`, set by the plugin on the loaded model).
Ours is vLLM's default state plus three calls: `add_request` gives a request its config's slot (its
`SamplingParams.extra_args`), `remove_request` frees it, `prepare_inputs` writes the per-token slot map — it runs
every step, also before a full CUDA-graph replay, whose inputs it cannot change, hence persistent buffers.
V2 runs on GPUs only: on CPU this is checked with a fake batch (tests/vllm), never end to end.
"""

from __future__ import annotations

import functools
from typing import Any

from server.engine.vllm.tokens import TokenSteering


def feed_v2(steering: TokenSteering, input_batch: Any, req_states: Any) -> None:
    """A V2 batch (decode requests first; dummy batches carry unknown ids → slot 0) → per-token slot map."""
    n = int(input_batch.num_reqs)
    index = input_batch.idx_mapping_np[:n]
    steering.feed(
        list(input_batch.req_ids[:n]),
        input_batch.num_scheduled_tokens[:n].tolist(),
        req_states.num_computed_tokens_np[index].tolist(),
        req_states.prompt_len.np[index].tolist(),
    )


@functools.cache
def model_state_class() -> type:
    """vLLM's default model state with steering (built on call: importing V2 needs vLLM's GPU modules)."""
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    class SteeringModelState(DefaultModelState):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, model: Any, encoder_cache: Any, device: Any) -> None:
            super().__init__(vllm_config, model, encoder_cache, device)
            self.steering: TokenSteering = model._sparse_steer

        def add_request(self, req_index: int, new_req_data: Any) -> None:
            super().add_request(req_index, new_req_data)
            params = new_req_data.sampling_params
            self.steering.add(new_req_data.req_id, None if params is None else params.extra_args)

        def remove_request(self, req_id: str) -> None:
            super().remove_request(req_id)
            self.steering.remove(req_id)

        def prepare_inputs(self, input_batch: Any, req_states: Any) -> Any:
            out = super().prepare_inputs(input_batch, req_states)
            feed_v2(self.steering, input_batch, req_states)
            return out

    return SteeringModelState
