"""One JSON error shape for the whole API.

``{"error": "<what went wrong>", "fields": {"<field path>": "<why>"}}`` — ``fields`` only when
specific input fields are at fault. 404/409 for expected outcomes, 422 for invalid payloads.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetlab_common.log import get_logger

log = get_logger(__name__)


class ApiError(Exception):
    """An expected failure, rendered as the API's JSON error."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or {}


class NotFoundError(ApiError):
    def __init__(self, what: str, ref: str) -> None:
        super().__init__(404, f"{what} {ref!r} not found")


class ConflictError(ApiError):
    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(409, message, fields)


class InvalidError(ApiError):
    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(422, message, fields)


def error_body(message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    return body


# Where FastAPI read the input from: the first element of an error's location.
_SOURCES = ("body", "query", "path", "header", "cookie")


def _field_path(loc: tuple[Any, ...]) -> str:
    # Only the leading source goes: a field or option may itself be named "path" or "body".
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in _SOURCES else loc)]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    """Render every error as the one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.fields), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for err in exc.errors():
            path = _field_path(tuple(err.get("loc", ())))
            if err.get("type") == "json_invalid":
                fields["body"] = f"malformed JSON: {err.get('ctx', {}).get('error', 'invalid')}"
                continue
            if err.get("type") == "value_error" and "error" in err.get("ctx", {}):
                # Our own validators' words, without pydantic's "Value error, " in front.
                fields.setdefault(path, str(err["ctx"]["error"]))
                continue
            fields.setdefault(path, str(err.get("msg", "invalid")))
        if "body" in fields and len(fields) == 1:
            message = "the request body is not valid: " + fields["body"]
        else:
            message = "invalid request: " + "; ".join(f"{k}: {v}" for k, v in fields.items())
        return JSONResponse(error_body(message, fields), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Still the one JSON shape; the details go to the log, not to the client.
        log.exception("api.unexpected_error", error=repr(exc))
        return JSONResponse(error_body("internal error: the failure is logged"), status_code=500)
