"""The engine on Gemma 3's architecture (a small random model of the real one's kind: sliding-window and global
layers, two rope bases, one KV head, tied embeddings), with prompts and generations longer than the window.

Greedy tokens equal Hugging Face `generate` (its own cache and masks) for rows joining and leaving with different
steering, eager and compiled (the start-up self-check must pass, not fall back); log-probs equal HF's scores and a
seeded sampled row is the same alone and batched. CPU float32, ~60 s (one inductor compile serves every bucket)."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from server.engine.model import LoadedModel
from server.engine.packed import pack_linears
from server.engine.request import Row, SteerSpec
from server.engine.sampling import SamplingParams
from tests.kit_families import HIDDEN, VOCAB
from tests.server.kit_reference import hf_tokens
from tests.server.test_slots import LAYER, Tokens, coder, configs, prompts
from vectors.sae import SparseCoder

__all__ = ["coder", "configs"]  # fixtures shared with test_slots

WINDOW = 8


def gemma3(window: int = WINDOW) -> torch.nn.Module:
    """Two sliding-window layers, one global, one sliding; rope bases 10k (local) and 1M (global)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None  # compare fixed-length runs
    return model


def engine_for(coder: SparseCoder, slots: int = 8) -> LoadedModel:
    """The engine with every linear layer packed, as a real model's large ones are (this model's are all below
    `PACKED_MIN_WEIGHT`): steps of 2 rows or more, the compiled ones included, multiply through the packed op."""
    engine = LoadedModel(gemma3(), Tokens(), {LAYER: coder}, max_context=96, max_batch=slots)
    assert pack_linears(engine.model, min_weight=0) > 0
    return engine


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n)


def run_joins(engine: LoadedModel, configs: list[SteerSpec]) -> tuple[list[list[int]], list[int]]:
    """Six rows of different lengths and steering joining at steps 0, 2, 3 and 6; their tokens and lengths."""
    ids = prompts(6)
    lengths = [14, 5, 12, 16, 9, 11]
    rows = [Row(ids[i], SamplingParams(max_new_tokens=lengths[i]), configs[i]) for i in range(6)]
    batcher = engine.batcher()
    joins = {0: [0, 1], 2: [2], 3: [3, 4], 6: [5]}
    for step in range(60):
        if step in joins:
            batcher.add([rows[i] for i in joins[step]])
        if not batcher.rows and step > max(joins):
            break
        batcher.step()
    return [r.output_ids for r in rows], lengths


def test_the_model_is_gemma3_shaped(coder: SparseCoder) -> None:
    engine = engine_for(coder)
    model = engine.model
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    assert engine.runner.sliding_window == WINDOW and engine.runner.shape.kv_heads == 1
    bases = {layer.self_attn.is_sliding for layer in model.model.layers}
    assert bases == {True, False}
    assert max(len(p) for p in prompts(6)) > WINDOW


def test_eager_and_compiled_match_hf_generate(coder: SparseCoder, configs: list[SteerSpec]) -> None:
    engine = engine_for(coder)
    eager, lengths = run_joins(engine, configs)
    ids = prompts(6)
    want = [hf_tokens(engine, coder, ids[i], configs[i], lengths[i]) for i in range(6)]
    assert eager == want
    plain = [hf_tokens(engine, coder, ids[i], SteerSpec(), lengths[i]) for i in (1, 2, 5)]
    assert sum(eager[i] != p for i, p in zip((1, 2, 5), plain, strict=True)) >= 2  # steering acts

    torch._dynamo.reset()
    counters.clear()
    status = engine.runner.compile("compiled", "inductor", buckets=[1, 4, 8])  # raises if a self-check fails
    assert status.buckets == {8: "compiled", 4: "compiled", 1: "compiled"}, status
    assert counters["stats"]["unique_graphs"] == 1  # one graph: dynamic batch and context length
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, _ = run_joins(engine, configs)
        assert compiled == want
        long = torch.randint(1, VOCAB, (70,), generator=torch.Generator().manual_seed(9)).tolist()
        rows = [Row(long, SamplingParams(max_new_tokens=8), configs[1]), Row(ids[3], greedy(8))]
        engine.generate(rows)  # keys read: 128, not the 64 the graph was first traced with
    assert rows[0].output_ids == hf_tokens(engine, coder, long, configs[1], 8)


def test_logprobs_and_seeded_sampling(coder: SparseCoder) -> None:
    engine = engine_for(coder)
    ids = prompts(3)
    greedy = Row(ids[0], SamplingParams(max_new_tokens=12, logprobs=2))
    seeded = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, seed=11)
    sampled = Row(ids[1], seeded)
    engine.generate([greedy, sampled, Row(ids[2], SamplingParams(max_new_tokens=4))])
    alone = Row(ids[1], seeded)
    engine.generate([alone])
    assert alone.output_ids == sampled.output_ids
    with torch.no_grad():
        out = engine.model.generate(
            input_ids=torch.tensor([ids[0]]),
            max_new_tokens=12,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    assert out.sequences[0, len(ids[0]) :].tolist() == greedy.output_ids
    want = torch.log_softmax(torch.stack(out.scores)[:, 0].float(), dim=-1)
    got = [lp.logprob for lp in greedy.output_logprobs]
    picked = want.gather(1, torch.tensor(greedy.output_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(got), picked.double().float(), atol=1e-4), (got, picked)
    assert [lp.top[0][0] for lp in greedy.output_logprobs] == greedy.output_ids
