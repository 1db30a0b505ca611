"""Strict JSON request bodies: a key repeated within one object is a 422, never a silent last-wins.

Python's parser keeps the last of two equal keys, so `{"steer": {"a": 1, "a": 99}}` would steer at 99 while a
proxy, a log or the client's own reading of the body may see 1. Routers built with `route_class=StrictJsonRoute`
parse their body with `loads_strict` instead; the request-size limit (`BodyLimit`) and every other check are
unchanged, and a malformed body still reaches FastAPI's own error path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from server.errors import invalid


class _RepeatedKeys(dict[str, Any]):
    """A JSON object in which `key` appeared more than once (kept so the path to it can be found)."""

    key: str


class DuplicateKeyError(HTTPException):
    """A JSON body repeats a key; `param` is the dotted path to it (`steer.demo/alpha`, `messages.0.role`).

    An `HTTPException` only so that FastAPI's body reader lets it through unchanged (it turns any other
    exception into a bare 400); `StrictJsonRoute` converts it into the project's 422 before anyone sees it.
    """

    def __init__(self, param: str) -> None:
        self.param = param
        super().__init__(422, f"`{param}`: duplicate key in the JSON body; each key may appear only once")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of `pairs`; a `_RepeatedKeys` naming the first repeated key if there is one."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated = _RepeatedKeys(obj)
    for key, _ in pairs:
        if key in seen:
            repeated.key = key
            break
        seen.add(key)
    return repeated


def _path_to_repeat(value: Any) -> str:
    """Dotted path of the first repeated key, in document order (iterative: bodies may nest deeply)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _RepeatedKeys):
            return ".".join((*path, node.key))
        children = (
            node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        )
        stack.extend(reversed([(child, (*path, str(k))) for k, child in children]))
    raise AssertionError("no repeated key found")


def loads_strict(data: bytes | str) -> Any:
    """`json.loads`, except that a key repeated within one object raises `DuplicateKeyError`."""
    repeated = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        obj = _object(pairs)
        repeated = repeated or isinstance(obj, _RepeatedKeys)
        return obj

    value = json.loads(data, object_pairs_hook=hook)
    if repeated:
        raise DuplicateKeyError(_path_to_repeat(value))
    return value


class StrictJsonRequest(Request):
    """A request whose JSON body is parsed (once) by `loads_strict`."""

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = loads_strict(await self.body())
        return self._strict_json


class StrictJsonRoute(APIRoute):
    """An API route that reads its JSON body with `StrictJsonRequest`; a repeated key is a 422 naming it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            try:
                return await handler(StrictJsonRequest(request.scope, request.receive))
            except DuplicateKeyError as exc:
                raise invalid(exc.param, str(exc.detail)) from None

        return strict_handler
