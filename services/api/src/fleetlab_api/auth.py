"""Who may call the API: off by default (bound to 127.0.0.1), or API tokens
(``Authorization: Bearer``) and FGLab's ``PASSWORD`` mode (HTTP basic, any user name).

Health stays open (``/healthz``, ``/api/v1/health``): load balancers and ``fleetlab up`` probe
it without credentials. Binding to another address with auth off refuses to start.
WebSockets are checked like requests. The dashboard's login keeps a token in an HttpOnly
cookie, taken like the header; its static files are open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field, SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetlab_common.log import get_logger

log = get_logger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/api/v1/health", "/login"})
# The dashboard's scripts and styles hold no data; its pages and the API stay closed.
OPEN_PREFIXES = ("/static/",)
# The dashboard's login (token mode) keeps the API token in this cookie (HttpOnly, SameSite).
TOKEN_COOKIE = "fleetlab_token"  # noqa: S105 - a cookie name, not a secret


def _cookie_token(headers: dict[bytes, bytes]) -> str:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE and value:
            return value
    return ""


class AuthSettings(BaseModel):
    """``FLEETLAB_AUTH__…``."""

    enabled: bool = Field(
        default=False, description="Require an API token (or the password) on every request"
    )
    password: SecretStr = Field(
        default=SecretStr(""),
        description="FGLab's PASSWORD mode: HTTP basic with any user name; turns auth on",
    )

    @property
    def on(self) -> bool:
        return self.enabled or bool(self.password.get_secret_value())


class UnsafeBindError(SystemExit):
    """The API would serve everyone with no auth."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: AuthSettings) -> None:
    """Refuse to serve a non-loopback address without auth."""
    if not auth.on and not is_loopback(host):
        raise UnsafeBindError(
            f"refusing to start: the API would listen on {host} with authentication off. "
            "Set FLEETLAB_AUTH__ENABLED=true (API tokens) and/or FLEETLAB_AUTH__PASSWORD=<secret>, "
            "or bind to 127.0.0.1 (FLEETLAB_HOST)."
        )


class AuthMiddleware:
    """Checks every HTTP request but health against the settings of the running API (read per
    request, so a test or an operator can change them without a new app)."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth: AuthSettings = self.state.settings.auth
        path: str = scope.get("path", "")
        if (
            scope["type"] not in ("http", "websocket")
            or not auth.on
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        header = headers.get(b"authorization", b"").decode("latin-1")
        if not header and (cookie := _cookie_token(headers)):
            header = f"Bearer {cookie}"
        if await self._allowed(header, auth):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Refused before the handshake completes: the client sees HTTP 403.
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if (
            not auth.password.get_secret_value()
            and scope.get("method") == "GET"
            and not path.startswith("/api/")
            and b"text/html" in headers.get(b"accept", b"")
        ):
            # A browser on a dashboard page in token mode: the login page, then back here.
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", f"/login?next={quote(path)}".encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        challenge = 'Basic realm="Fleetlab"' if auth.password.get_secret_value() else "Bearer"
        body = json.dumps(
            {
                "error": "authentication required: send Authorization: Bearer <token>"
                + (" or HTTP basic with the password" if challenge.startswith("Basic") else "")
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", challenge.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _allowed(self, header: str, auth: AuthSettings) -> bool:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            from fleetlab_api.tokens import repository as tokens

            async with self.state.db().acquire() as conn:
                ok: bool = await tokens.check(conn, value)
            return ok
        password = auth.password.get_secret_value()
        if scheme.lower() == "basic" and value and password:
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            given = decoded.partition(":")[2]
            return hmac.compare_digest(given.encode(), password.encode())
        return False
