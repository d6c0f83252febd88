"""The OpenAPI document: every route's error responses, in the API's one JSON error shape.

Routes document their own success model and the errors particular to them; this pass adds,
where a route can give them and did not say so itself, the errors every route of the same kind
gives: 400 (a body that cannot be parsed), 401 (auth on, no credentials), 404 (a named thing
that does not exist), 409 (a state that forbids the change), 413 (a body over the limit), 422
(invalid input) and 503 (a service it asks over NATS did not answer). Each refers to the
``Error`` schema: ``{"error": "...", "fields": {"<field>": "<why>"}}``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fleetlab_api.auth import OPEN_PATHS

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for people"},
        "fields": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Each input field at fault (a dotted path) and why",
        },
    },
    "example": {
        "error": "options do not fit the project's schema: lr: must be a number",
        "fields": {"options.lr": "must be a number"},
    },
}

_ERROR_REF = {"$ref": "#/components/schemas/Error"}

_DESCRIPTIONS = {
    "400": "The body could not be parsed (malformed JSON or multipart data)",
    "401": "Authentication is on and no valid token or password was sent",
    "404": "A thing the request names (in the path or the query) does not exist",
    "409": "The thing is in a state that forbids this change",
    "403": "The URL's signature is wrong or it has expired",
    "413": "The request body is over its documented limit",
    "422": "Invalid input: `fields` names each field at fault and why",
    "503": "A Fleetlab service this route asks over NATS did not answer in time",
}

# Query parameters that name a thing which may not exist (then 404).
_NAMING_QUERIES = {"project", "sweep", "ids", "experiments", "agent"}
# Routes that ask another service over NATS request/reply.
_ASKS = re.compile(
    r"/logs|/metrics|/measurements|/usage|/waiting|/agents|/explain|/compare|/webhooks"
)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _add(responses: dict[str, Any], status: str) -> None:
    existing = responses.get(status)
    if existing is None:
        responses[status] = _error(_DESCRIPTIONS[status])
        return
    # A route's own words for the status stay; the body shape is the API's one error.
    existing.setdefault("content", {"application/json": {"schema": _ERROR_REF}})


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add the common error responses to every operation of an OpenAPI document."""
    document.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            params = operation.get("parameters", [])
            has_body = "requestBody" in operation
            names_things = any(p.get("in") == "path" for p in params) or any(
                p.get("in") == "query" and p.get("name") in _NAMING_QUERIES for p in params
            )
            needed = ["422"]
            if path not in OPEN_PATHS:
                needed.append("401")
            if has_body:
                needed += ["400", "413"]
            if names_things or has_body:
                needed.append("404")
            if method != "get":
                needed.append("409")
            if "/signed/" in path:
                needed.append("403")
            if _ASKS.search(path):
                needed.append("503")
            for status in needed:
                _add(responses, status)
            # FastAPI's own 422 body differs from ours: point it at the API's error shape.
            unprocessable = responses.get("422", {})
            for media in unprocessable.get("content", {}).values():
                media["schema"] = _ERROR_REF
    return document


def install(app: FastAPI) -> None:
    """Serve the completed document at ``/openapi.json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
