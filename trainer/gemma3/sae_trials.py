"""One SAE trial on the real model's cached activations: `python -m trainer.gemma3.sae_trials --k 32`.

The build's SAE stage computes the corpus's layer-L activations (minutes on 2 cores) and trains once; comparing
SAE settings needs the activations once and many trainings. This computes them as the build does
(`corpus.sae_rows`, `sae.collect_activations`, the same 48 held-out rows; the quick preset measures the first
16), caches them as safetensors, then trains one `SaeTraining` and prints its FVE / L0 / dead features on the
held-out rows as the build reports them (`sae_stats`, outliers over the norm cap left out) with its wall time,
as one JSON line. docs/real-model-results.md ("SAE runs, third round") lists the runs made with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

CONTEXT, EVAL_ROWS, QUICK_EVAL_ROWS, SEED = 128, 48, 16, 0


def cached_activations(cache: Path, layer: int) -> dict[str, torch.Tensor]:
    """`{"train": [n, d], "eval": [m, d]}`: layer `layer`'s corpus activations, computed once into `cache`."""
    from safetensors.torch import load_file, save_file

    path = cache / f"gemma3-270m-layer{layer}.safetensors"
    if not path.is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trainer.gemma3.convert import converted_model
        from trainer.gemma3.corpus import sae_rows
        from trainer.gemma3.sae import collect_activations

        folder, _ = converted_model()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        rows, eval_rows = sae_rows(tokenizer, CONTEXT, EVAL_ROWS, SEED)
        with torch.no_grad():
            acts = {
                "train": collect_activations(model, rows, layer),
                "eval": collect_activations(model, eval_rows, layer),
            }
        cache.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in acts.items()}, str(path))
    return load_file(str(path))


def main() -> None:
    from trainer.gemma3.sae import SaeTraining, norm_cap, train_sae_on_activations
    from trainer.world.sae_train import sae_stats
    from vectors.sae import load_sae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=8)
    ap.add_argument("--architecture", choices=["batchtopk", "jumprelu", "standard"], default="batchtopk")
    ap.add_argument("--k", type=float, default=32.0)
    ap.add_argument("--sparsity", type=float, default=6.0, help="standard: L1 coefficient; jumprelu: L0")
    ap.add_argument("--d-sae", type=int, default=2560)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--samples", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument(
        "--seed", type=int, default=SEED, help="the training's (the corpus rows keep the build's)"
    )
    ap.add_argument("--b-dec-at-zero", action="store_true", help="sae-lens's own start for the decoder bias")
    ap.add_argument("--cache", type=Path, default=Path("var/sae-trials"))
    ap.add_argument("--out", type=Path, default=Path("var/sae-trials/sae"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    acts = cached_activations(args.cache, args.layer)
    cap = norm_cap(acts["train"])
    kept = acts["train"][acts["train"].norm(dim=-1) <= cap]
    spec = SaeTraining(
        d_sae=args.d_sae,
        lr=args.lr,
        samples=args.samples,
        batch=args.batch,
        seed=args.seed,
        architecture=args.architecture,
        k=args.k,
        sparsity_coefficient=args.sparsity,
        b_dec_at_mean=not args.b_dec_at_zero,
    )
    start = time.perf_counter()
    train_sae_on_activations(kept, args.layer, spec, args.out, model_name="gemma3-270m")
    seconds = time.perf_counter() - start
    quick = acts["eval"][: QUICK_EVAL_ROWS * (CONTEXT - 1)]
    result = {
        "spec": asdict(spec),
        "epochs": round(spec.samples / len(kept), 2),
        "train_seconds": round(seconds, 1),
        "load_average": round(os.getloadavg()[0], 1),
        "held_out_48_rows": asdict(sae_stats(acts["eval"], args.out, max_norm=cap)),
        "held_out_16_rows": asdict(sae_stats(quick, args.out, max_norm=cap)),
        "loads_elementwise": load_sae(args.out).elementwise,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
