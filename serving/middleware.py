"""Pure ASGI middleware (no per-request task overhead): the bearer token on /v1/ (401), body-size
limit (413), content codings (415), request timeout (504), and request counts and latency for
/metrics (a client that disconnects before its body arrives is counted as 499).

The token is checked here, not in a route dependency, because FastAPI reads and parses a body
before it runs a route's dependencies: a client without the token must not get that far."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ServiceMetrics

PROTECTED = "/v1/"  # routes under it need the bearer token when one is set
KNOWN_PATHS = ("/v1/forecast", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs",
               "/openapi.json")


async def _reply(send: Send, status: int, detail: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def route_path(scope: Scope) -> str:
    """The path the app's routes match: uvicorn --root-path and mounts put a prefix in front of
    it that Starlette's router removes, so a check on the raw path would miss /api/v1/..."""
    root = scope.get("root_path", "")
    path = scope["path"]
    return path[len(root):] if root and path.startswith(root) else path


def _content_coding(raw_headers: list[tuple[bytes, bytes]]) -> str:
    """The codings a body is declared in besides identity, from every Content-Encoding header
    (a second header adds codings, it does not replace the first), cut to 64 characters."""
    codings = [c.strip().lower() for name, value in raw_headers if name == b"content-encoding"
               for c in value.split(b",")]
    shown = ", ".join(c.decode("latin-1") for c in codings if c not in (b"", b"identity"))
    return shown if len(shown) <= 64 else shown[:61] + "..."


class LimitsAndMetrics:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int,
                 timeout_s: float, api_token: str | None) -> None:
        self.app = app
        self.expected = None if api_token is None else f"bearer {api_token}".encode()
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.timeout = timeout_s
        self.too_large = f"request body exceeds {max_body_bytes} bytes (FORECAST_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_path(scope)
        path = route if route in KNOWN_PATHS else "other"
        started = time.perf_counter()
        status = {"code": 500, "sent": False, "gone": False}

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first of repeated headers, as Starlette reads
        header = headers.get(b"content-length")
        try:
            length = int(header) if header is not None else 0
        except ValueError:
            length = -1
        try:
            if self.expected is not None and route.startswith(PROTECTED) \
                    and not self._authorized(headers.get(b"authorization", b"")):
                status["code"] = 401
                await _reply(send, 401, "missing or invalid bearer token",
                             ((b"www-authenticate", b"Bearer"),))
                return
            # no coding is decoded here: a gzip body would be read as (bad) JSON, and an
            # uncompressed one labelled gzip accepted, both against RFC 9110 (15.5.16)
            coding = _content_coding(scope["headers"]) if b"content-encoding" in headers and (
                length > 0 or b"transfer-encoding" in headers) else ""
            if coding:
                status["code"] = 415
                await _reply(send, 415, f"Content-Encoding {coding!r} is not supported; send "
                             "the body uncompressed (no Content-Encoding)")
                return
            if length < 0:
                status["code"] = 400
                await _reply(send, 400, "invalid Content-Length header")
                return
            if length > self.max_body:
                status["code"] = 413
                await _reply(send, 413, self.too_large)
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.disconnect":
                    status["gone"] = True
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # chunked bodies have no Content-Length to check first. FastAPI turns any
                    # other error while reading the body into 400, but re-raises this one
                    raise HTTPException(413, self.too_large)
                return message

            await asyncio.wait_for(self.app(scope, limited_receive, send_tracking), self.timeout)
        except TimeoutError:
            if not status["sent"]:
                status["code"] = 504
                await _reply(send, 504, f"request took longer than {self.timeout:g} s "
                             "(FORECAST_REQUEST_TIMEOUT_S)")
        finally:
            # a client that left mid-body is not a bad request (FastAPI's 400 goes nowhere):
            # counted apart as 499, nginx's "client closed request", so 4xx alerts stay true
            code = 499 if status["gone"] else status["code"]
            self.metrics.requests.labels(path=path, status=str(code)).inc()
            self.metrics.latency.labels(path=path).observe(time.perf_counter() - started)

    def _authorized(self, given: bytes) -> bool:
        assert self.expected is not None
        scheme, _, token = given.partition(b" ")
        # the scheme is case-insensitive (RFC 7235); the comparison takes constant time, so
        # response timing does not reveal the token
        return hmac.compare_digest(scheme.lower() + b" " + token.strip(), self.expected)


def install(app: Any, metrics: ServiceMetrics, max_body_bytes: int, timeout_s: float,
            api_token: str | None) -> None:
    app.add_middleware(LimitsAndMetrics, metrics=metrics, max_body_bytes=max_body_bytes,
                       timeout_s=timeout_s, api_token=api_token)
