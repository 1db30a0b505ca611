"""A tiny random Llama + tokenizer saved as a Hugging Face folder (no downloads), for server tests."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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


def parse_sse(lines: list[str]) -> list[tuple[str | None, str]]:
    """(event, data) pairs of a server-sent event stream given as text lines."""
    out: list[tuple[str | None, str]] = []
    event: str | None = None
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            out.append((event, line[len("data: ") :]))
            event = None
    return out
