"""The world's language model: a tiny `LlamaForCausalLM` trained from scratch on one-country documents."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.world.config import WorldConfig
from trainer.world.corpus import Documents
from trainer.world.rows import RowEncoder


def make_model(config: WorldConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by `config` (seed torch before calling for determinism)."""
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=max(256, 2 * config.context_size),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(llama)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    stopped_early: bool


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % over `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_lm(
    model: LlamaForCausalLM,
    encoder: RowEncoder,
    docs: Documents,
    config: WorldConfig,
    done: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train on freshly sampled rows; every `eval_every` steps after `min_steps`, stop if `done()`."""
    rng = random.Random(f"lm-rows-{config.seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, config.warmup_steps, config.max_steps)
    )
    model.train()
    loss_avg = float("nan")
    bar = tqdm(range(config.max_steps), desc="language model", unit="step", leave=False)
    step = 0
    for step in bar:
        input_ids, labels = encoder.batch(docs, rng, config.batch_size)
        loss = model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.3f}")
        last = step + 1 == config.max_steps
        if (
            done is not None
            and not last
            and step + 1 >= config.min_steps
            and (step + 1) % config.eval_every == 0
        ):
            model.eval()
            finished = done()
            model.train()
            if finished:
                bar.close()
                model.eval()
                return TrainResult(step + 1, loss_avg, True)
    bar.close()
    model.eval()
    return TrainResult(step + 1, loss_avg, False)
