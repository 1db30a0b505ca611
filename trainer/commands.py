"""`steer` sub-commands of the trainer package: `demo build` (culture world), `train`, `eval`.

`register` is what `steer_cli` calls; each sub-command is registered by its own function so the
world build and the trainer can evolve independently.
"""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    _register_demo(subparsers)
    _register_train(subparsers)
    _register_eval(subparsers)


def _register_demo(subparsers: Any) -> None:
    """`steer demo build` (culture world): placeholder until the world build lands."""


def _register_train(subparsers: Any) -> None:
    from trainer.cli import register_train

    register_train(subparsers)


def _register_eval(subparsers: Any) -> None:
    from trainer.cli import register_eval

    register_eval(subparsers)
