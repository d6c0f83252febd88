"""Forward-only SQL migrations, one Postgres schema per service.

Files are ``NNNN_name.sql`` in a service's ``migrations/`` folder; each is applied once, in its
own transaction, and its sha256 recorded. A file edited after it was applied is refused by
name, and so is an applied file that disappeared: migrations only move forward. Every runner
takes one advisory lock first, so many processes may start at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from fleetlab_common.db import Conn
from fleetlab_common.log import get_logger

log = get_logger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z][a-z0-9_]*$")
# pg_advisory_lock key shared by every Fleetlab migration runner.
LOCK_KEY = 0x466C6565746C6162  # "Fleetlab"

COMMON_MIGRATIONS = Path(__file__).parent / "sql"


class MigrationError(RuntimeError):
    """A migration cannot be applied: the message names the file and why."""


@dataclass(frozen=True)
class Migration:
    """One migration file, named with its folder's prefix (``common/`` for shared ones)."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path, prefix: str = "") -> list[Migration]:
    """The migrations in ``directory``, in order; refuses badly named or duplicate numbers."""
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        number = match.group(1)
        if number in found:
            raise MigrationError(f"{path}: number {number} is also used by {found[number].name}")
        found[number] = path
    return [Migration(prefix + p.name, p.read_text()) for _, p in sorted(found.items())]


async def migrate(dsn: str, schema: str, directory: Path | None) -> list[str]:
    """Apply the shared migrations (outbox, inbox), then the service's; return what was applied."""
    if not _SCHEMA.match(schema):
        raise MigrationError(f"schema name {schema!r} must be lowercase letters, digits and _")
    migrations = load_migrations(COMMON_MIGRATIONS, "common/")
    if directory is not None:
        migrations += load_migrations(directory)
    conn: Conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch("SELECT name, checksum FROM schema_migrations")
            applied = {r["name"]: r["checksum"] for r in rows}
            known = {m.name for m in migrations}
            for name in applied:
                if name not in known:
                    raise MigrationError(
                        f"{schema}: migration {name} was applied but its file is gone"
                    )
            for migration in migrations:
                if migration.name in applied:
                    if applied[migration.name] != migration.checksum:
                        raise MigrationError(
                            f"{schema}: migration {migration.name} changed after it was applied "
                            "(checksum mismatch); add a new migration instead"
                        )
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                            migration.name,
                            migration.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    # Rolled back and not recorded; say which file, as for every other refusal.
                    raise MigrationError(
                        f"{schema}: migration {migration.name} failed and was rolled back: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                applied_now.append(migration.name)
                log.info("migration.applied", schema=schema, migration=migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
    return applied_now
