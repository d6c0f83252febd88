"""Request body size limits: a body over the limit gets 413 and changes nothing.

Every request body is capped at ``FLEETLAB_MAX_BODY_MB`` (default 16 MiB): JSON documents,
schema files, batches. Routes made for bulk data carry their own, larger limits:

- ``POST /api/v1/experiments/{id}/metrics`` (a batch of any size, read as it streams):
  ``FLEETLAB_MAX_METRICS_BODY_MB`` (default 1 GiB);
- uploads to presigned artifact URLs (``PUT /signed/...``): the outputs limits
  (``FLEETLAB_MAX_OUTPUT_MB``), checked by that route;
- code snapshots (``POST /api/v1/code``): their own archive limit, checked by that route.

A declared ``Content-Length`` over the limit is refused before the body is read; a chunked body
is counted as it arrives and refused as soon as it passes the limit, before any handler acts
on it (handlers read the whole body before writing anything).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIB = 1024 * 1024

_METRICS = re.compile(r"^/api/v1/experiments/[^/]+/metrics/?$")
_OWN_LIMIT = ("/signed/", "/api/v1/code")


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when a streamed body passes its limit: an HTTP error, so the
    routes' body readers pass it on and the API renders it as its JSON error with 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit // MIB} MiB")


def limit_for(path: str, settings: Any) -> int | None:
    """The byte limit of a request's body, or None when the route checks its own."""
    if path.startswith(_OWN_LIMIT):
        return None
    if _METRICS.match(path):
        return int(settings.max_metrics_body_mb) * MIB
    return int(settings.max_body_mb) * MIB


def _too_large_body(limit: int) -> bytes:
    return json.dumps(
        {
            "error": f"request body too large: the limit is {limit // MIB} MiB",
            "fields": {"body": f"larger than {limit} bytes"},
        }
    ).encode()


class BodyLimitMiddleware:
    """413 for bodies over the route's limit (see the module's docstring)."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope["path"], self.state.settings)
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._refuse(send, limit)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = _too_large_body(limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
