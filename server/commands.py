"""`steer serve`: run the server with uvicorn; SIGTERM drains before exiting."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from server.settings import ServerSettings

log = logging.getLogger("server")

# CLI flag → settings field (every field is also read from STEER_<FIELD>).
_FLAGS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("--model", "model", {"help": "model folder or hub id (STEER_MODEL)"}),
    (
        "--sae",
        "sae",
        {"action": "append", "help": "SAE source; repeat for several (STEER_SAE, comma-separated)"},
    ),
    ("--vectors", "vectors", {"help": "catalog folder (STEER_VECTORS)"}),
    ("--host", "host", {"help": "bind address (default 127.0.0.1)"}),
    ("--port", "port", {"type": int, "help": "port (default 8000)"}),
    ("--device", "device", {"help": "auto, cpu, cuda, cuda:N, mps (default auto)"}),
    ("--dtype", "dtype", {"choices": ["auto", "float32", "float16", "bfloat16"], "help": "default auto"}),
    ("--max-batch", "max_batch", {"type": int, "help": "STEER_MAX_BATCH"}),
    ("--max-queue", "max_queue", {"type": int, "help": "STEER_MAX_QUEUE"}),
    ("--max-new-tokens", "max_new_tokens", {"type": int, "help": "STEER_MAX_NEW_TOKENS"}),
    ("--max-context", "max_context", {"type": int, "help": "STEER_MAX_CONTEXT (KV cache positions per row)"}),
    (
        "--engine",
        "engine",
        {"choices": ["auto", "compiled", "eager"], "help": "decode step: STEER_ENGINE (default auto)"},
    ),
    (
        "--backend",
        "backend",
        {"choices": ["native", "vllm"], "help": "engine: STEER_BACKEND (default native; vllm: STEER_VLLM_*)"},
    ),
    (
        "--strength-policy",
        "strength_policy",
        {"choices": ["reject", "clamp"], "help": "STEER_STRENGTH_POLICY"},
    ),
    ("--log-level", None, {"default": "info", "choices": ["debug", "info", "warning", "error"]}),
)


def register(subparsers: Any) -> None:
    """Add `steer serve` to the `steer` command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model + SAE + vector catalog over HTTP",
        description="Serve one model and its SAE(s); each request chooses vectors from the catalog. "
        "Every option can also be set with a STEER_* environment variable.",
    )
    for flag, _field, kwargs in _FLAGS:
        parser.add_argument(flag, **kwargs)
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="load the model and SAE, compile the decode step into STEER_COMPILE_CACHE_DIR and exit "
        "(a later start-up with the same settings and shapes then compiles in seconds)",
    )
    parser.set_defaults(handler=serve)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """CLI flags override environment variables; unset flags fall through to STEER_* and defaults."""
    given = {field: getattr(args, field) for _flag, field, _kw in _FLAGS if field is not None}
    return ServerSettings(**{k: v for k, v in given.items() if v is not None})


def serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            print(
                f"steer serve: {field}: {err['msg']} (flag --{field.replace('_', '-')} or STEER_{field.upper()})"
            )
        return 2
    if args.compile_only:
        from server.startup import compile_only

        status = compile_only(settings)
        log.info(
            "compile only: %s, buckets %s%s",
            status.mode,
            status.buckets,
            f" ({status.reason})" * bool(status.reason),
        )
        return 0 if status.mode == "compiled" or settings.engine == "eager" else 1
    from server.uvicorn_server import run_server

    return run_server(settings, log_level=args.log_level)
