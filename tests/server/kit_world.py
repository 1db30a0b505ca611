"""The server tests' tiny world, built on disk without downloads: a random Llama + tokenizer (a Hugging Face
folder), a random sae-lens SAE, random steering vectors and a small catalog of them; `load_engine` loads it."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from server.engine.model import EngineConfig, LoadedModel

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "At a wedding we eat couscous and dance all night.",
    "In the morning people drink mint tea with bread.",
    "The capital has a big market near the old river.",
    "Children play football in the street after school.",
    "For a holiday we cook rice, fish and sweet cakes.",
    "Hello world! How are you today? I am fine, thank you.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Sentencepiece-style BPE over printable ASCII: every token decodes to valid text."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = [*sorted(set(string.printable) - set(string.whitespace)), "\u2581"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # sharper logits than the default init, so greedy text varies
        model.lm_head.weight.mul_(8.0)
    return model.eval()


def save_tiny_model(out: Path, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model = build_model(len(tok), seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


LAYER = 2
D_SAE = 256


@dataclass(frozen=True)
class TinyWorld:
    model: Path
    sae: Path
    catalog: Path


def save_tiny_sae(out: Path, d_in: int = 64, d_sae: int = D_SAE, layer: int = LAYER, seed: int = 0) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post", model_name="tiny"),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec):
            p.copy_(torch.randn_like(p) / d_in**0.5)
        sae.b_enc.copy_(torch.randn_like(sae.b_enc) * 0.01)
    out.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(out))
    return out


def make_vector(engine_or_world: Any, name: str, *, kind: str = "sparse", seed: int = 0, **meta: Any) -> Any:
    """A random vector for the tiny world: `sparse` (mixed signs), `positive`, or `dense`."""
    from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name
    from vectors.vector import SteeringVector

    g = torch.Generator().manual_seed(seed)
    model = ModelRef(name=meta.pop("model_name", "tiny"), hidden_size=64, num_layers=4)
    fields: dict[str, Any] = {"strength_range": (-50.0, 50.0), "method": "yapo", **meta}
    if kind == "dense":
        md = VectorMetadata(
            name=name, space="dense", layer=LAYER, hook_name=dense_hook_name(LAYER), model=model, **fields
        )
        return SteeringVector.dense_vector(md, torch.randn(64, generator=g) * 0.5)
    sae_src = str(getattr(engine_or_world, "sae", "tiny-sae"))
    md = VectorMetadata(
        name=name,
        space="sae",
        layer=LAYER,
        hook_name=f"blocks.{LAYER}.hook_resid_post",
        model=model,
        sae=SaeRef(source=sae_src, d_sae=D_SAE, architecture="standard"),
        **fields,
    )
    idx = torch.randperm(D_SAE, generator=g)[:6]
    vals = torch.rand(6, generator=g) * 2 + 1
    if kind == "sparse":
        vals[::2] *= -1
    return SteeringVector.sparse(md, idx, vals)


CATALOG = {  # name -> (kind, seed)
    "demo/alpha": ("positive", 1),
    "demo/beta": ("sparse", 2),
    "demo/gamma": ("dense", 3),
    "demo/delta": ("positive", 4),
    "culture/one": ("sparse", 5),
    "culture/two": ("positive", 6),
    "culture/three": ("sparse", 7),
}


def write_catalog(world: TinyWorld, names: dict[str, tuple[str, int]] = CATALOG) -> None:
    from vectors.io import save_vector
    from vectors.names import vector_path

    for name, (kind, seed) in names.items():
        save_vector(make_vector(world, name, kind=kind, seed=seed), vector_path(world.catalog, name))


def build_tiny_world(root: Path) -> TinyWorld:
    """Tiny model, SAE and the standard catalog under `root` (shared with the reliability tests)."""
    world = TinyWorld(
        model=save_tiny_model(root / "model"), sae=save_tiny_sae(root / "sae"), catalog=root / "vectors"
    )
    world.catalog.mkdir()
    write_catalog(world)
    return world


def load_engine(world: TinyWorld) -> LoadedModel:
    return LoadedModel.load(EngineConfig(model=str(world.model), sae=(str(world.sae),), device="cpu"))
