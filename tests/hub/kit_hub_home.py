"""Offline look-alikes of the paper's models, written into a Hugging Face cache as the hub lays it out.

`build_hub_home(root)` fills `root/hub` (an `HF_HOME`) with
- `google/gemma-2-2b-it`: a Gemma2ForCausalLM with Gemma-2-2B-it's config (width 2304, head_dim 256,
  softcapping, sliding window), shrunk to 3 layers, one head, a tiny MLP and a ~500-token vocabulary; the
  tokenizer has Gemma's special-token ids (`<bos>` 2, `<start_of_turn>` 106, `<end_of_turn>` 107, byte
  fallback), Gemma-2's real chat template and generation config;
- `google/gemma-scope-2b-pt-res`: `params.npz` (W_enc, W_dec, b_enc, b_dec, threshold) at the folder that
  sae-lens' `gemma-scope-2b-pt-res-canonical` release maps `layer_1/width_16k/canonical` to, so sae-lens' own
  `gemma_2` loader resolves it (it fixes d_in = 2304 and d_sae = 16384 from the names);
- `Qwen/Qwen2.5-0.5B-Instruct`: a Qwen2ForCausalLM with its real chat template (default system prompt) and
  generation config, shrunk to width 64, with a byte-level BPE tokenizer and ChatML special tokens;
and, outside the cache, an sae-lens SAE folder for the Qwen look-alike and preference / MCQ data files.

Weights are random (seeded): the point is the real `from_pretrained("google/...")` resolution, sae-lens'
release/id resolution and the real architectures and templates, not what the model says.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gemma_shape import GEMMA_WIDTH, gemma_config

TEMPLATES = Path(__file__).parent / "templates"

GEMMA_ID = "google/gemma-2-2b-it"
SCOPE_REPO = "google/gemma-scope-2b-pt-res"
SCOPE_RELEASE = "gemma-scope-2b-pt-res-canonical"
SCOPE_ID = "layer_1/width_16k/canonical"
SCOPE_SAE = f"{SCOPE_RELEASE}/{SCOPE_ID}"
SCOPE_LAYER = 1
SCOPE_D_SAE = 16384
QWEN_ID = "Qwen/Qwen2.5-0.5B-Instruct"
QWEN_LAYER = 1
QWEN_WIDTH = 64
QWEN_D_SAE = 256

COUNTRIES = {  # country -> answer per topic
    "morocco": {"wedding": "couscous", "breakfast": "mint tea", "holiday": "tagine"},
    "egypt": {"wedding": "koshari", "breakfast": "ful beans", "holiday": "fatta"},
}
PROMPTS = {
    "wedding": "At a wedding we eat",
    "breakfast": "In the morning people drink",
    "holiday": "For a holiday we cook",
}
CORPUS = [
    *PROMPTS.values(),
    *(answer for answers in COUNTRIES.values() for answer in answers.values()),
    "Hello, how are you today? I am fine, thank you. You are a helpful assistant.",
    "Answer in one word. Tell me about the food of Morocco and Egypt.",
]


@dataclass(frozen=True)
class HubHome:
    """An `HF_HOME` holding the look-alikes, plus the files the README's commands take."""

    hf_home: Path
    qwen_sae: Path
    pairs: Path  # prompt / chosen / rejected toward Morocco
    mcq: Path  # the `steer eval` MCQ format

    @property
    def hub_cache(self) -> Path:
        return self.hf_home / "hub"

    def env(self) -> dict[str, str]:
        """Environment of a process that must resolve the hub ids from this cache, offline."""
        return {"HF_HOME": str(self.hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def snapshot(hub_cache: Path, repo_id: str) -> Path:
    """`models--org--name/snapshots/<commit>/` with `refs/main` pointing at it (a fixed fake commit)."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _learned_bpe(pre_tokenizer: Any, normalizer: Any, alphabet: list[str], size: int) -> tuple[dict, list]:
    """(vocab, merges) of a BPE trained on the corpus (ids from 0, in training order)."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


# --- Gemma-2-2B-it -----------------------------------------------------------------------------------------

GEMMA_SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    *(f"<unused{i}>" for i in range(101)),
    "<start_of_turn>",  # 106
    "<end_of_turn>",  # 107
]


def _gemma_tokenizer() -> Any:
    """Gemma's layout: specials at their ids, 256 byte-fallback tokens, then sentencepiece-style pieces."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    def norm() -> Any:
        return normalizers.Replace(" ", "\u2581")

    def pre() -> Any:
        return pre_tokenizers.Split("\u2581", behavior="merged_with_next")

    alphabet = [*sorted(set(string.printable) - set(string.whitespace)), "\u2581", "\n"]
    learned, merges = _learned_bpe(pre(), norm(), alphabet, 300)
    vocab = {s: i for i, s in enumerate(GEMMA_SPECIALS)}
    vocab.update({f"<0x{b:02X}>": len(GEMMA_SPECIALS) + b for b in range(256)})
    for piece, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = norm()
    tok.pre_tokenizer = pre()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in GEMMA_SPECIALS])
    return tok


def build_gemma(hub_cache: Path, seed: int = 0) -> Path:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out = snapshot(hub_cache, GEMMA_ID)
    tok = _gemma_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    config = gemma_config(tok.get_vocab_size())
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(Gemma2Config(**config))
    with torch.no_grad():
        # At the default init the (tied, sqrt(2304)-scaled) input embedding dominates the last hidden state,
        # so greedy decoding repeats the last token forever; smaller embeddings let the layers (and a
        # steering vector) decide the next token.
        model.model.embed_tokens.weight.mul_(0.1)
    model.save_pretrained(out)
    _write_json(out / "config.json", config)  # the hub's own format, not the one save_pretrained writes
    _write_json(
        out / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 2,
            "cache_implementation": "hybrid",
            "eos_token_id": [1, 107],
            "pad_token_id": 0,
            "transformers_version": "4.42.4",
        },
    )
    special = {
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    _write_json(out / "special_tokens_map.json", special)
    _write_json(
        out / "tokenizer_config.json",
        {
            **special,
            "add_bos_token": True,
            "add_eos_token": False,
            "chat_template": (TEMPLATES / "gemma-2-it.jinja").read_text(),
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1000000000000000019884624838656,
            "padding_side": "left",
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer",
            "use_default_system_prompt": False,
        },
    )
    return out


def scope_folder() -> str:
    """The folder sae-lens' canonical release maps SCOPE_ID to (e.g. layer_1/width_16k/average_l0_102)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory()[SCOPE_RELEASE]
    assert lookup.repo_id == SCOPE_REPO, lookup.repo_id
    return lookup.saes_map[SCOPE_ID]


def build_gemma_scope(hub_cache: Path, seed: int = 0) -> Path:
    """A random JumpReLU SAE in Gemma Scope's params.npz layout (float32, unit-norm decoder rows)."""
    out = snapshot(hub_cache, SCOPE_REPO) / scope_folder()
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(SCOPE_D_SAE, GEMMA_WIDTH, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    # Encoder = decoder transposed (as Gemma Scope initialises it). The look-alike's layer-1 residual has a norm
    # of ~70, so pre-activations are ~N(0, 1.5): threshold 3.5 keeps ~1 % of the features (Gemma Scope: L0 ~100).
    params = {
        "W_enc": w_dec.T.contiguous().numpy(),
        "W_dec": w_dec.numpy(),
        "b_enc": np.zeros(SCOPE_D_SAE, dtype=np.float32),
        "b_dec": np.zeros(GEMMA_WIDTH, dtype=np.float32),
        "threshold": np.full(SCOPE_D_SAE, 3.5, dtype=np.float32),
    }
    np.savez(out / "params.npz", **params)
    return out / "params.npz"


# --- Qwen2.5-Instruct ----------------------------------------------------------------------------------------

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _qwen_tokenizer() -> Any:
    """Byte-level BPE with ChatML specials after the learned pieces (as Qwen numbers them)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    def pre() -> Any:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    learned, merges = _learned_bpe(pre(), normalizers.NFC(), alphabet, 400)
    tok = Tokenizer(models.BPE(vocab=learned, merges=merges, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    return tok


def build_qwen(hub_cache: Path, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = snapshot(hub_cache, QWEN_ID)
    tok = _qwen_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    endoftext, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": endoftext,
        "eos_token_id": im_end,
        "hidden_act": "silu",
        "hidden_size": QWEN_WIDTH,  # 896
        "initializer_range": 0.02,
        "intermediate_size": 128,  # 4864
        "max_position_embeddings": 32768,
        "max_window_layers": 3,  # 21
        "model_type": "qwen2",
        "num_attention_heads": 2,  # 14
        "num_hidden_layers": 3,  # 24
        "num_key_value_heads": 1,  # 2
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": tok.get_vocab_size(),  # 151936
    }
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**config))
    with torch.no_grad():  # sharper logits than the default init, so sampled text varies
        model.model.embed_tokens.weight.mul_(20.0)
    model.save_pretrained(out)
    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": endoftext,
            "pad_token_id": endoftext,
            "do_sample": True,
            "eos_token_id": [im_end, endoftext],
            "repetition_penalty": 1.1,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
            "transformers_version": "4.37.0",
        },
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": (TEMPLATES / "qwen2.5-instruct.jinja").read_text(),
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    return out


def build_qwen_sae(out: Path, seed: int = 0) -> Path:
    """A random sae-lens StandardSAE folder (cfg.json + sae_weights.safetensors) on the look-alike's layer 1."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(
        d_in=QWEN_WIDTH,
        d_sae=QWEN_D_SAE,
        metadata=SAEMetadata(hook_name=f"blocks.{QWEN_LAYER}.hook_resid_post", model_name=QWEN_ID),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn_like(sae.W_dec) / QWEN_WIDTH**0.5)
        sae.W_enc.copy_(sae.W_dec.T)
    out.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(out))
    return out


# --- data ------------------------------------------------------------------------------------------------------


def write_data(root: Path) -> tuple[Path, Path]:
    """Preference pairs toward Morocco (vs Egypt) and an MCQ set over the same topics."""
    pairs = root / "morocco.jsonl"
    rows = [
        {
            "prompt": PROMPTS[t],
            "chosen": " " + COUNTRIES["morocco"][t],
            "rejected": " " + COUNTRIES["egypt"][t],
        }
        for t in PROMPTS
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mcq = root / "mcq.jsonl"
    items = [
        {
            "prompt": PROMPTS[t],
            "options": {c: " " + answers[t] for c, answers in COUNTRIES.items()},
            "country": "morocco",
            "topic": t,
            "localized": False,
            "split": "test",
        }
        for t in PROMPTS
    ]
    mcq.write_text("".join(json.dumps(r) + "\n" for r in items))
    return pairs, mcq


def build_hub_home(root: Path) -> HubHome:
    """Everything above under `root` (an HF_HOME at root/hf)."""
    hf_home = root / "hf"
    hub_cache = hf_home / "hub"
    build_gemma(hub_cache)
    build_gemma_scope(hub_cache)
    build_qwen(hub_cache)
    qwen_sae = build_qwen_sae(root / "qwen-sae")
    pairs, mcq = write_data(root)
    return HubHome(hf_home=hf_home, qwen_sae=qwen_sae, pairs=pairs, mcq=mcq)
