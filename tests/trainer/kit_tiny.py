"""Tiny in-memory pieces for trainer tests: a word-level tokenizer, a random Llama, a random SAE,
and synthetic preference pairs. Seconds to build, no downloads."""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.config import TrainConfig
from trainer.data import PreferencePair
from trainer.resources import Resources
from vectors.sae import SparseCoder

COUNTRIES = ("morocco", "egypt", "spain", "nepal")
TOPICS = {
    "dish": ("couscous", "koshari", "paella", "dalbhat"),
    "drink": ("tea", "karkade", "horchata", "chiya"),
    "music": ("gnawa", "shaabi", "flamenco", "dohori"),
    "sport": ("football", "squash", "tennis", "kabaddi"),
}
WORDS = [
    "at",
    "a",
    "wedding",
    "we",
    "eat",
    "drink",
    "play",
    "the",
    "music",
    "sport",
    "i",
    "am",
    "from",
    "in",
    "morning",
    "people",
    "love",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = ["<pad>", "<s>", "</s>", "<unk>", *WORDS, *COUNTRIES]
    for answers in TOPICS.values():
        vocab.extend(answers)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_model(
    vocab_size: int, *, layers: int = 3, hidden: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.requires_grad_(False)
    if dtype == torch.float64:
        _full_precision_norms(model)
    return model


def _full_precision_norms(model: torch.nn.Module) -> None:
    """HF's RMSNorm computes in float32 whatever the dtype; for float64 finite differences keep float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = forward.__get__(module)


def build_coder(
    d_model: int = 32,
    d_sae: int = 128,
    *,
    layer: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    architecture: str = "standard",
) -> SparseCoder:
    g = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(d_model, d_sae, generator=g, dtype=torch.float64) / d_model**0.5
    return SparseCoder(
        W_enc=w_enc.to(dtype),
        b_enc=(-0.3 + 0.1 * torch.randn(d_sae, generator=g, dtype=torch.float64)).to(dtype),
        W_dec=(w_enc.T.clone() * 0.5).to(dtype),
        b_dec=(0.05 * torch.randn(d_model, generator=g, dtype=torch.float64)).to(dtype),
        architecture=architecture,
        threshold=torch.full((d_sae,), 0.05, dtype=dtype) if architecture == "jumprelu" else None,
        k=16 if architecture == "topk" else None,
        hook_name=f"blocks.{layer}.hook_resid_post",
        layer=layer,
        source="tiny-sae",
    )


def tiny_resources(*, dtype: torch.dtype = torch.float32, seed: int = 0, layer: int = 1) -> Resources:
    tok = build_tokenizer()
    model = build_model(len(tok), seed=seed, dtype=dtype)
    coder = build_coder(model.config.hidden_size, layer=layer, seed=seed, dtype=dtype)
    return Resources(model=model, tokenizer=tok, model_name="tiny-llama", coder=coder, sae_source="tiny-sae")


def tiny_pairs(country: str = "morocco", *, localized: bool = False) -> list[PreferencePair]:
    """Chosen = the country's answer, rejected = each other country's answer, for every topic."""
    c = COUNTRIES.index(country)
    out = []
    for topic, answers in TOPICS.items():
        prompt = (f"i am from {country} . " if localized else "") + f"at a wedding we love the {topic}"
        for j, other in enumerate(answers):
            if j != c:
                out.append(
                    PreferencePair(prompt, answers[c], other, {"topic": topic, "localized": localized})
                )
    return out


def save_tiny_world_files(root, res: Resources) -> tuple[str, str]:
    """Write the tiny model (+ tokenizer) and its SAE (sae-lens format) under root; returns (model, sae) dirs."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    model_dir, sae_dir = root / "model", root / "sae"
    res.model.save_pretrained(model_dir)
    res.tokenizer.save_pretrained(model_dir)
    c = res.coder
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=c.d_model, d_sae=c.d_sae, metadata=SAEMetadata(hook_name=c.hook_name, model_name="tiny")
        )
    )
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(getattr(c, name))
    sae.save_model(str(sae_dir))
    return str(model_dir), str(sae_dir)


def train_config(tmp_path, method: str = "yapo", **overrides) -> TrainConfig:
    """A short run (12 steps, batch 4, logs and checkpoints every 4) writing to `tmp_path/cat`."""
    base = dict(
        method=method,
        model="tiny-llama",
        name="culture/morocco",
        out=str(tmp_path / "cat"),
        lr=0.05,
        max_steps=12,
        batch_size=4,
        log_every=4,
        checkpoint_every=4,
        progress=False,
    )
    return TrainConfig(**{**base, **overrides})


def write_mini_world(
    root, test_topics: frozenset[str] = frozenset({"music"}), val_topics: frozenset[str] = frozenset()
) -> None:
    """A hand-made world folder (data/, world.json) over COUNTRIES × TOPICS for the demo report's code."""
    data = root / "data"
    (data / "pairs").mkdir(parents=True)
    mcq, neutral = [], []
    for ci, country in enumerate(COUNTRIES):
        pairs = []
        for topic, answers in TOPICS.items():
            split = "test" if topic in test_topics else "val" if topic in val_topics else "train"
            options = dict(zip(COUNTRIES, answers, strict=True))
            for prompt, loc in (
                (f"i am from {country} . we love the {topic}", True),
                (f"we love the {topic}", False),
            ):
                mcq.append(
                    {
                        "prompt": prompt,
                        "options": options,
                        "country": country,
                        "topic": topic,
                        "localized": loc,
                        "split": split,
                    }
                )
            for j, other in enumerate(answers):
                if j != ci:
                    pairs.append(
                        {
                            "prompt": f"we love the {topic}",
                            "chosen": answers[ci],
                            "rejected": other,
                            "topic": topic,
                            "localized": False,
                            "split": split,
                        }
                    )
        (data / "pairs" / f"{country}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    neutral = [
        {"prompt": "people drink", "options": ["tea", "wedding"], "answer": "tea"},
        {"prompt": "we play", "options": ["tennis", "morning"], "answer": "tennis"},
    ]
    (data / "mcq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mcq))
    (data / "neutral.jsonl").write_text("".join(json.dumps(r) + "\n" for r in neutral))
    (root / "world.json").write_text(json.dumps({"countries": [{"key": c} for c in COUNTRIES]}))
