"""The `steer` command line: the one place that knows every package.

Each package contributes its sub-commands through a `register(subparsers)` function in its
`commands` module; this module only wires them together, imports them lazily (so `steer --help`
stays fast and a missing optional piece names itself), and turns expected errors into exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds) — each module defines `register(subparsers) -> None`.
COMMAND_MODULES: tuple[str, ...] = (
    "trainer.commands",  # demo build, train, eval
    "server.commands",  # serve
    "bench.commands",  # bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steer",
        description="Train, inspect and serve sparse (SAE-space) steering vectors.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that package has no commands yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
