"""`BenchConfig`: the sizes of one benchmark run, with presets for `--quick` (CPU), `--gpu` and tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Mode = Literal["quick", "gpu", "smoke"]
SUITES: tuple[str, ...] = ("decode", "engine", "server", "join", "train", "hf", "peer")
# Run only when named (`steer bench peer`): it starts vLLM's server beside ours, minutes on a CPU.
ON_REQUEST: tuple[str, ...] = ("peer",)
DEFAULT_SUITES: tuple[str, ...] = tuple(s for s in SUITES if s not in ON_REQUEST)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how big. Every field lands in the JSON result."""

    mode: Mode = "quick"
    suites: tuple[str, ...] = DEFAULT_SUITES
    repeats: int = 5  # timed rounds per case (median taken); ≥ 5 for a table of record
    warmup: int = 1  # untimed rounds first
    seed: int = 0
    # decode
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    ks: tuple[int, ...] = (16, 64, 256)  # non-zeros of the random YaPO vectors (capped by d_sae)
    other_sae_ks: tuple[int, ...] | None = None  # k values for the 2nd, 3rd … SAE width (None: `ks`)
    prompt_len: int = 32
    new_tokens: int = 64  # decode steps timed after the first token
    ttft_prefills: int = 3  # prefills per round (their median is the round's time to first token)
    mixed_batch: int = 32  # rows with distinct configs
    # the served engine's compiled decode step (engine and server suites)
    compile_backend: str = "inductor"
    # server
    clients: int = 32
    server_new_tokens: int = 16
    # trainer: the fast mode's one-time pass (π_0 and cached activations) is counted, so the run must be long
    # enough to amortise it as a real one does (the demo report trains ~70 epochs); 6 epochs is still short
    train_pairs: int = 32
    train_batch: int = 4
    train_epochs: int = 6
    # model / device
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = (
        1  # torch intra-op threads; 1 on a shared CPU (spinning threads collapse under load)
    )
    world: str | None = "var/demo"  # a built culture world; None or missing → random weights of its shape
    shape: str | None = None  # a real model's shape with random weights (`bench.world.SHAPES`), instead
    # peer (vLLM's OpenAI server beside ours, on `shape`'s folder)
    vllm_python: str = "var/vllm-venv/bin/python"  # the vLLM venv (`make vllm-venv`)
    vllm_threads_bind: str = "0-1"  # VLLM_CPU_OMP_THREADS_BIND: vLLM's CPU threads pinned to these cores
    # the server suite's engines: native alone (in this process), or vllm (`steer serve` on both engines, as
    # child processes on `shape`'s folder, `bench.backends`)
    backend: Literal["native", "vllm"] = "native"
    gpu_model: str = "gemma-2-2b"
    gpu_sae_widths: tuple[int, ...] = (16384, 65536)
    extra: dict[str, Any] = field(default_factory=dict)  # shape overrides (tests)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """CPU, culture-world shapes, ≤ 3 minutes on 2 cores."""
        return replace(cls(), **overrides)

    @classmethod
    def real_shape(cls, shape: str, **overrides: Any) -> BenchConfig:
        """CPU, a real model's shape (`--quick --shape gemma3-270m`): its steps cost ~100× the culture world's,
        so fewer and shorter cases (the engine, the server and HF generate; no training)."""
        base = cls(
            shape=shape,
            suites=("engine", "server", "hf"),
            batch_sizes=(1, 32),
            ks=(16, 64),
            prompt_len=16,
            new_tokens=16,
            server_new_tokens=8,  # the serial server decodes 32 requests one after the other
            repeats=3,
        )
        return replace(base, **overrides)

    @classmethod
    def gpu(cls, **overrides: Any) -> BenchConfig:
        """One CUDA GPU: random-weight Gemma-2-2B shape, bf16, random JumpReLU SAEs of width 16k and 65k."""
        base = cls(
            mode="gpu",
            device="cuda",
            dtype="bfloat16",
            threads=None,
            world=None,
            prompt_len=128,
            new_tokens=32,
            ttft_prefills=1,
            other_sae_ks=(64,),  # GPU time is scarce: all k on the 16k SAE, k=64 on the 65k one
            clients=32,
            server_new_tokens=8,
            train_pairs=32,
            train_batch=4,
            train_epochs=4,
        )
        return replace(base, **overrides)

    @classmethod
    def smoke(cls, **overrides: Any) -> BenchConfig:
        """A tiny end-to-end run for tests: correctness of the pipeline and the schema, not timings."""
        base = cls(
            mode="smoke",
            repeats=2,
            warmup=0,
            batch_sizes=(1, 2),
            ks=(4, 8),
            prompt_len=6,
            new_tokens=3,
            ttft_prefills=1,
            mixed_batch=3,
            clients=3,
            server_new_tokens=3,
            train_pairs=4,
            train_batch=2,
            train_epochs=1,
            compile_backend="aot_eager",  # traces the same graph, compiles nothing
            world=None,
            extra={"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "d_sae": 64},
        )
        return replace(base, **overrides)

    def validate(self) -> None:
        unknown = set(self.suites) - set(SUITES)
        if unknown:
            raise ValueError(f"unknown suite(s) {sorted(unknown)}; choose from {list(SUITES)}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be ≥ 1 and warmup ≥ 0")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.ks or min(self.ks) < 1:
            raise ValueError("batch sizes and k values must be positive")
        if self.prompt_len < 1 or self.new_tokens < 1 or self.server_new_tokens < 1:
            raise ValueError("prompt_len, new_tokens and server_new_tokens must be positive")
        if self.clients < 1 or self.mixed_batch < 1 or self.train_pairs < 1 or self.train_batch < 1:
            raise ValueError("clients, mixed_batch, train_pairs and train_batch must be positive")
        if self.backend == "vllm" and self.suites != ("server",):
            raise ValueError(
                "--backend vllm compares the engines in the server suite: `steer bench server --backend vllm`"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
