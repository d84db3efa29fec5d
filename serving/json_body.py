"""Request bodies parsed as strict JSON: a key given twice in one object is refused (422).

Python's json module keeps the last of repeated keys, so `{"a": [1, 2], "a": [3, 4]}` would
silently forecast from one of two histories the client sent. RFC 8259 leaves repeated names
undefined; a client that sends them has a bug worth hearing about."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from serving.schemas import cut


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = json.loads(await self.body(), object_pairs_hook=_unique)
            except _RepeatedKey as err:
                # an HTTPException is the one error FastAPI lets out of its body parsing as is
                raise HTTPException(422, [{
                    "loc": ["body"], "type": "json_repeated_key",
                    "msg": f"key {cut(err.key)!r} appears more than once in one JSON object; "
                           "send each key once"}]) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Route class for routers whose bodies are parsed by StrictJSONRequest."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
