"""The migration runner on a real PostgreSQL: forward only, once each, safe to run at once."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from fleetlab_common.db.migrate import (
    COMMON_MIGRATIONS,
    LOCK_KEY,
    MigrationError,
    load_migrations,
    migrate,
)

COMMON = ["common/0001_outbox_inbox.sql"]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        yield conn
    finally:
        await conn.close()


def write(directory: Path, name: str, sql: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(sql)
    return path


async def tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    return {r["table_name"] for r in rows}


async def recorded(conn: asyncpg.Connection, schema: str) -> dict[str, str]:
    rows = await conn.fetch(f'SELECT name, checksum FROM "{schema}".schema_migrations')
    return {r["name"]: r["checksum"] for r in rows}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_text().encode()).hexdigest()


async def test_applies_common_then_service_migrations_in_order_and_records_checksums(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # 0010 uses what 0002 created: it only works when applied after it.
    write(tmp_path, "0010_add_column.sql", "ALTER TABLE things ADD COLUMN size int;")
    write(tmp_path, "0002_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    write(tmp_path, "README.md", "not a migration: ignored")

    applied = await migrate(fresh_dsn, "svc", tmp_path)

    assert applied == [*COMMON, "0002_things.sql", "0010_add_column.sql"]
    assert {"outbox", "inbox", "things", "schema_migrations"} <= await tables(db, "svc")
    # Nothing lands in public: one schema per service.
    assert await tables(db, "public") == set()
    assert await recorded(db, "svc") == {
        COMMON[0]: sha256(COMMON_MIGRATIONS / "0001_outbox_inbox.sql"),
        "0002_things.sql": sha256(tmp_path / "0002_things.sql"),
        "0010_add_column.sql": sha256(tmp_path / "0010_add_column.sql"),
    }
    cols = await db.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'svc' AND table_name = 'things'"
    )
    assert {c["column_name"] for c in cols} == {"id", "size"}


async def test_a_second_run_applies_nothing_and_a_new_file_alone(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    assert await migrate(fresh_dsn, "svc", tmp_path) == [*COMMON, "0001_a.sql"]
    assert await migrate(fresh_dsn, "svc", tmp_path) == []

    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
    assert await migrate(fresh_dsn, "svc", tmp_path) == ["0002_b.sql"]
    assert set(await recorded(db, "svc")) == {*COMMON, "0001_a.sql", "0002_b.sql"}


async def test_without_a_service_folder_only_the_common_migrations_apply(
    fresh_dsn: str, db: asyncpg.Connection
) -> None:
    assert await migrate(fresh_dsn, "agentless", None) == COMMON
    assert await tables(db, "agentless") == {"outbox", "inbox", "schema_migrations"}


async def test_each_schema_gets_its_own_tables(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path / "a", "0001_x.sql", "CREATE TABLE only_a (id int);")
    write(tmp_path / "b", "0001_x.sql", "CREATE TABLE only_b (id int);")
    assert await migrate(fresh_dsn, "svc_a", tmp_path / "a") == [*COMMON, "0001_x.sql"]
    assert await migrate(fresh_dsn, "svc_b", tmp_path / "b") == [*COMMON, "0001_x.sql"]
    assert "only_a" in await tables(db, "svc_a")
    assert "only_a" not in await tables(db, "svc_b")
    assert "only_b" in await tables(db, "svc_b")


async def test_an_edited_applied_file_is_refused_by_name(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    await migrate(fresh_dsn, "svc", tmp_path)
    path.write_text("CREATE TABLE a (id bigint);")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")

    with pytest.raises(MigrationError, match=r"0001_a\.sql.*changed"):
        await migrate(fresh_dsn, "svc", tmp_path)
    # Refused before anything else ran.
    assert "b" not in await tables(db, "svc")


async def test_a_vanished_applied_file_is_refused_by_name(fresh_dsn: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    path = write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
    await migrate(fresh_dsn, "svc", tmp_path)
    path.unlink()

    with pytest.raises(MigrationError, match=r"0002_b\.sql.*gone"):
        await migrate(fresh_dsn, "svc", tmp_path)
    # Migrating without the service folder loses its applied files too: also refused.
    with pytest.raises(MigrationError, match=r"0001_a\.sql"):
        await migrate(fresh_dsn, "svc", None)


@pytest.mark.parametrize(
    "name", ["1_init.sql", "0001-init.sql", "0001_Init.sql", "00001_init.sql", "0001_.sql"]
)
async def test_a_badly_named_file_is_refused_before_anything_runs(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path, name: str
) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    write(tmp_path, name, "CREATE TABLE bad (id int);")
    with pytest.raises(MigrationError, match=name.replace(".", r"\.")):
        await migrate(fresh_dsn, "svc", tmp_path)
    assert await tables(db, "svc") == set()


async def test_a_duplicate_number_is_refused_naming_both_files(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "0002_a.sql", "CREATE TABLE a (id int);")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
    with pytest.raises(MigrationError, match=r"0002_b\.sql.*0002_a\.sql"):
        await migrate(fresh_dsn, "svc", tmp_path)
    assert await tables(db, "svc") == set()
    with pytest.raises(MigrationError, match="0002"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("schema", ["Svc", "svc-x", "1svc", 'x"; DROP SCHEMA public; --'])
async def test_a_bad_schema_name_is_refused(
    fresh_dsn: str, db: asyncpg.Connection, schema: str
) -> None:
    with pytest.raises(MigrationError, match="schema name"):
        await migrate(fresh_dsn, schema, None)
    assert await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'") == 1


async def test_a_failing_migration_leaves_nothing_half_applied(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    bad = write(
        tmp_path,
        "0002_bad.sql",
        "CREATE TABLE half (id int);\nINSERT INTO no_such_table VALUES (1);",
    )
    write(tmp_path, "0003_later.sql", "CREATE TABLE later (id int);")

    with pytest.raises(MigrationError, match=r"0002_bad\.sql.*no_such_table"):
        await migrate(fresh_dsn, "svc", tmp_path)

    names = await tables(db, "svc")
    assert "ok" in names
    assert "half" not in names  # its transaction rolled back
    assert "later" not in names  # nothing after a failure runs
    assert set(await recorded(db, "svc")) == {*COMMON, "0001_ok.sql"}

    # Fixed (it was never applied, so it may change), the next run picks up where it stopped.
    bad.write_text("CREATE TABLE half (id int);")
    assert await migrate(fresh_dsn, "svc", tmp_path) == ["0002_bad.sql", "0003_later.sql"]


async def test_a_failure_releases_the_lock_for_the_next_runner(
    fresh_dsn: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_bad.sql", "SELECT * FROM nowhere;")
    with pytest.raises(MigrationError):
        await migrate(fresh_dsn, "svc", tmp_path)
    (tmp_path / "0001_bad.sql").write_text("SELECT 1;")
    # Would hang on pg_advisory_lock if the failed run had kept it.
    assert await asyncio.wait_for(migrate(fresh_dsn, "svc", tmp_path), 10) == ["0001_bad.sql"]


async def test_concurrent_runners_take_turns_and_apply_each_file_once(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    gate_key = 4242
    # The first runner to get in blocks inside 0001 until the test opens the gate, so the
    # second runner is certainly running meanwhile: it must wait for the runners' lock.
    write(
        tmp_path,
        "0001_gated.sql",
        f"SELECT pg_advisory_xact_lock({gate_key});\nCREATE TABLE counter (n int);",
    )
    # Applied twice, this would insert two rows.
    write(tmp_path, "0002_seed.sql", "INSERT INTO counter VALUES (1);")
    await db.execute("SELECT pg_advisory_lock($1)", gate_key)

    async def waiting_on(objid: int) -> int:
        value = await db.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE d.datname = current_database() AND l.locktype = 'advisory'"
            " AND NOT l.granted AND l.objid = $1",
            objid,
        )
        return int(value)

    async def one_in_each() -> bool:
        in_migration = await waiting_on(gate_key)
        waiting_for_turn = await waiting_on(LOCK_KEY & 0xFFFFFFFF)
        return in_migration == 1 and waiting_for_turn == 1

    runners = asyncio.gather(
        migrate(fresh_dsn, "svc", tmp_path),
        migrate(fresh_dsn, "svc", tmp_path),
        return_exceptions=True,
    )
    try:
        await eventually(one_in_each)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", gate_key)
        results = await asyncio.wait_for(runners, 20)
    applied: list[list[str]] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        applied.append(result)
    first, second = applied

    everything = [*COMMON, "0001_gated.sql", "0002_seed.sql"]
    assert sorted([*first, *second]) == sorted(everything)
    assert not set(first) & set(second)
    assert await db.fetchval("SELECT count(*) FROM svc.counter") == 1
    assert set(await recorded(db, "svc")) == set(everything)


async def test_many_runners_at_once_on_a_fresh_schema(
    fresh_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # Every service replica starts at once; CREATE SCHEMA/TABLE must not race either.
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    results = await asyncio.wait_for(
        asyncio.gather(*(migrate(fresh_dsn, "svc", tmp_path) for _ in range(5))), 20
    )
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted([*COMMON, "0001_a.sql"])
    assert await db.fetchval("SELECT count(*) FROM svc.schema_migrations") == 2
