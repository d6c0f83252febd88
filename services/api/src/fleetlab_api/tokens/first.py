"""The first API token, so that a fresh install with ``FLEETLAB_AUTH__ENABLED=true`` (and no
password) is usable: when auth is on and no token exists, the API makes one named ``admin`` and
writes its secret to ``$FLEETLAB_HOME/api-token`` (mode 0600), where the ``fleetlab`` command
finds it on that machine. Revoke it once you have made your own.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncpg

from fleetlab_api.tokens import repository as repo
from fleetlab_common.log import get_logger

log = get_logger(__name__)

FIRST_TOKEN_NAME = "admin"  # noqa: S105 - a name, not a secret
TOKEN_FILE = "api-token"  # noqa: S105 - a file name
PREFIX = "flt_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (made 0600 before the secret goes in)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


async def ensure_first_token(pool: asyncpg.Pool, home: Path) -> Path | None:
    """Make the first token when there is none; the file its secret went to, else None."""
    secret = new_secret()
    async with pool.acquire() as conn:
        made = await repo.insert_first(conn, FIRST_TOKEN_NAME, secret)
    if made is None:
        return None
    path = home / TOKEN_FILE
    _write_private(path, secret + "\n")
    log.warning(
        "api.first_token",
        name=FIRST_TOKEN_NAME,
        path=str(path),
        hint="auth is on and there was no token: this one is in the file; revoke it later",
    )
    return path
