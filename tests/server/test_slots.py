"""LoadedModel v2 on the four model families: slot KV cache == Hugging Face `generate`, rows joining and leaving at
different lengths, steering per slot == HF generate with the same steering alone, seeded sampling independent of
the batch, the device sampler's distribution, and buffers that never move (CPU float32)."""

from __future__ import annotations

import math

import pytest
import torch

from server.engine.model import LoadedModel
from server.engine.request import Row, SteerSpec
from server.engine.sampling import Sampler, SamplingParams
from tests.kit_families import HIDDEN, MODELS, VOCAB
from tests.server.kit_reference import hf_tokens
from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name
from vectors.sae import SparseCoder, coder_from_sae_lens
from vectors.vector import SteeringVector

LAYER, D_SAE = 1, 128


class Tokens:
    """A tokenizer stand-in: these tests compare token ids, not text."""

    eos_token_id = None
    pad_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def coder() -> SparseCoder:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(3)
    cfg = JumpReLUSAEConfig(
        d_in=HIDDEN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=f"model.layers.{LAYER}", model_name="tiny")
    )
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn_like(sae.W_enc) / HIDDEN**0.5)
        sae.W_dec.copy_(torch.randn_like(sae.W_dec) / HIDDEN**0.5)
        sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.2)
    return coder_from_sae_lens(sae, "tiny-jumprelu")


def _vector(
    name: str, code: dict[int, float] | None = None, dense: torch.Tensor | None = None, **kw: object
) -> SteeringVector:
    model = ModelRef(name="tiny", hidden_size=HIDDEN, num_layers=3)
    if dense is not None:
        meta = VectorMetadata(
            name=name, method="bipo", space="dense", layer=2, hook_name=dense_hook_name(2), model=model, **kw
        )
        return SteeringVector.dense_vector(meta, dense)
    sae = SaeRef(source="tiny-jumprelu", d_sae=D_SAE, architecture="jumprelu")
    meta = VectorMetadata(
        name=name,
        method="yapo",
        space="sae",
        layer=LAYER,
        hook_name=f"model.layers.{LAYER}",
        model=model,
        sae=sae,
        **kw,
    )
    assert code is not None
    return SteeringVector.sparse(meta, torch.tensor(list(code)), torch.tensor(list(code.values())))


@pytest.fixture(scope="module")
def configs() -> list[SteerSpec]:
    g = torch.Generator().manual_seed(11)
    feats = torch.randperm(D_SAE, generator=g)[:60].tolist()
    mixed = _vector("t/mixed", {f: (3.0 if i % 2 else -3.0) for i, f in enumerate(feats[:40])})
    neg = _vector("t/neg", {f: -4.0 for f in feats[40:]})
    late = _vector("t/late", {f: 3.0 for f in feats[:20]}, apply="generation")
    dense = _vector("t/dense", dense=3.0 * torch.randn(HIDDEN, generator=g))
    return [
        SteerSpec(),
        SteerSpec(((mixed, 1.0),)),
        SteerSpec(((neg, 1.5), (dense, 1.0))),
        SteerSpec(((mixed, 0.0),)),
        SteerSpec(((late, 1.0),)),
        SteerSpec(((dense, -1.0), (mixed, -1.0))),
    ]


def _engine(arch: str, coder: SparseCoder, slots: int = 8, max_neg: int = 256) -> LoadedModel:
    torch.manual_seed(0)
    model = MODELS[arch]().eval()
    model.generation_config.eos_token_id = None  # compare fixed-length runs
    return LoadedModel(
        model, Tokens(), {LAYER: coder}, max_context=64, max_batch=slots, max_neg_features=max_neg
    )


def prompts(n: int, seed: int = 5) -> list[list[int]]:
    """Prompts of different lengths, several longer than Gemma-2's 16-token sliding window."""
    g = torch.Generator().manual_seed(seed)
    lengths = [20, 9, 25, 3, 17, 12, 30, 6][:n]
    return [torch.randint(1, VOCAB, (k,), generator=g).tolist() for k in lengths]


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_joins_and_leaves_match_hf_generate(arch: str, coder: SparseCoder, configs: list[SteerSpec]) -> None:
    engine = _engine(arch, coder)
    ids = prompts(6)
    lengths = [12, 5, 9, 14, 7, 10]
    seqs = [Row(ids[i], SamplingParams(max_new_tokens=lengths[i]), configs[i]) for i in range(6)]
    pointers = [t.data_ptr() for t in engine.runner.buffers()]
    batcher = engine.batcher()
    joins = {0: [0, 1], 2: [2], 3: [3, 4], 6: [5]}  # rows join mid-generation, others leave at their lengths
    for step in range(40):
        if step in joins:
            batcher.add([seqs[i] for i in joins[step]])
        if not batcher.rows and step > max(joins):
            break
        batcher.step()
    assert [t.data_ptr() for t in engine.runner.buffers()] == pointers  # nothing reallocated
    for i, s in enumerate(seqs):
        assert s.output_ids == hf_tokens(engine, coder, ids[i], configs[i], lengths[i]), f"row {i}"
    plain = [hf_tokens(engine, coder, ids[i], SteerSpec(), lengths[i]) for i in (1, 2, 5)]
    assert sum(seqs[i].output_ids != p for i, p in zip((1, 2, 5), plain, strict=True)) >= 2  # steering acts


def test_rows_beyond_the_gathered_buffers_take_the_full_encode(
    coder: SparseCoder, configs: list[SteerSpec]
) -> None:
    """With room for 4 negative features per slot, the 20-negative vectors steer exactly through the full encode."""
    engine = _engine("llama", coder, max_neg=4)
    ids = prompts(6)
    seqs = [Row(ids[i], SamplingParams(max_new_tokens=6), configs[i]) for i in range(6)]
    engine.generate(seqs)
    assert not engine.runner.steering.needs_full_encode(0, 8)  # every slot freed
    for i, s in enumerate(seqs):
        assert s.output_ids == hf_tokens(engine, coder, ids[i], configs[i], 6), f"row {i}"


def test_32_rows_with_32_configs(coder: SparseCoder) -> None:
    """A full batch of distinct configs (YaPO with negative features, dense, single features, phases)."""
    engine = _engine("llama", coder, slots=32)
    g = torch.Generator().manual_seed(2)
    specs = []
    for i in range(32):
        feats = torch.randperm(D_SAE, generator=g)[:8].tolist()
        code = {f: float(torch.randn(1, generator=g)) * 4 for f in feats}
        kind = i % 4
        if kind == 0:
            specs.append(SteerSpec(((_vector(f"t/y{i}", code), 1.0),)))
        elif kind == 1:
            specs.append(SteerSpec(((_vector(f"t/d{i}", dense=2 * torch.randn(HIDDEN, generator=g)), 1.0),)))
        elif kind == 2:
            specs.append(SteerSpec(((engine.adhoc_vector(feats[0]), 6.0),)))
        else:
            specs.append(SteerSpec(((_vector(f"t/g{i}", code, apply="generation"), 1.0),)))
    ids = [prompts(8, seed=i)[i % 8] for i in range(32)]
    seqs = [Row(ids[i], SamplingParams(max_new_tokens=6), specs[i]) for i in range(32)]
    engine.generate(seqs)
    for i in (0, 1, 2, 3, 13, 30):
        assert seqs[i].output_ids == hf_tokens(engine, coder, ids[i], specs[i], 6), f"row {i}"


def test_seeded_sampling_alone_equals_batched(coder: SparseCoder) -> None:
    engine = _engine("qwen2", coder)
    ids = prompts(4)
    params = [
        SamplingParams(max_new_tokens=12, temperature=1.0, seed=7),
        SamplingParams(max_new_tokens=12, temperature=0.7, top_k=20, seed=2**64 - 1),
        SamplingParams(max_new_tokens=12, temperature=1.3, top_p=0.8, seed=3),
        SamplingParams(max_new_tokens=3),  # a greedy neighbour that leaves early
    ]
    alone = []
    for i, p in enumerate(params):
        seq = Row(ids[i], p)
        engine.generate([seq])
        alone.append(seq.output_ids)
    batched = [Row(ids[i], p) for i, p in enumerate(params)]
    engine.generate(batched[::-1])  # other slots, other neighbours
    assert [s.output_ids for s in batched] == alone
    unseeded = [Row(ids[0], SamplingParams(max_new_tokens=12, temperature=1.0)) for _ in range(2)]
    engine.generate(unseeded)
    assert unseeded[0].output_ids != unseeded[1].output_ids  # fresh seeds differ


def _reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The float64 CPU reference distribution (the engine's sampler before v2)."""
    scores = logits.double()
    scores = (scores - scores.max()) / p.temperature
    if 0 < p.top_k < scores.shape[0]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        order = torch.argsort(scores, descending=True)
        probs = torch.softmax(scores[order], dim=-1)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= p.top_p
        scores[order[drop]] = float("-inf")
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=1, temperature=1.0),
        SamplingParams(max_new_tokens=1, temperature=0.6, top_k=5),
        SamplingParams(max_new_tokens=1, temperature=1.2, top_p=0.7),
    ],
)
def test_device_sampler_matches_reference_distribution(params: SamplingParams) -> None:
    """Chi-square of 20,000 draws (fixed seeds) against the float64 reference distribution."""
    vocab, draws = 12, 20_000
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(1)) * 1.5
    sampler = Sampler(draws, torch.device("cpu"))
    for slot in range(draws):
        sampler.set(slot, params, seed=1000 + slot)
    ids = sampler.sample(
        logits.expand(draws, vocab).clone(), 0, sampled=range(draws), filtered=params.filters
    )
    observed = torch.bincount(ids, minlength=vocab).double()
    expected = _reference_probs(logits, params) * draws
    support = expected > 0
    assert observed[~support].sum() == 0  # nothing drawn outside top-k / top-p
    chi2 = float((((observed - expected) ** 2)[support] / expected[support]).sum())
    dof = int(support.sum()) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof) + 10, (chi2, dof)  # far beyond p = 0.001 if it were wrong


def test_cache_too_large_refuses_to_start(coder: SparseCoder, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.engine import runner

    monkeypatch.setattr(runner, "_free_bytes", lambda device: 1024)
    with pytest.raises(runner.CacheTooLarge, match="STEER_MAX_BATCH=8 × STEER_MAX_CONTEXT=64"):
        _engine("llama", coder)
