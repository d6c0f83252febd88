"""The transactional outbox and the inbox (one event at a time and in shared transactions) on a
real PostgreSQL and a real nats-server; a broker whose NATS came back without its store.

Each test that counts stored messages gets its own nats-server (started in ``tmp_path``, a few
tens of milliseconds), so the global stream names hold only that test's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from fleetlab_common.broker import ensure_streams, event_subscriber, make_broker, publish_event
from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import InboxBatch, first_delivery, prune_inbox
from fleetlab_common.db.migrate import migrate
from fleetlab_common.db.outbox import OutboxRelay, enqueue
from fleetlab_common.db.pool import create_pool
from fleetlab_common.embedded import free_port
from fleetlab_common.events import (
    STREAMS,
    AgentOnline,
    Event,
    ExperimentStopRequested,
    ExperimentSubmitted,
)
from fleetlab_common.runspec import RunSpec
from fleetlab_common.service import cancel_until_done
from fleetlab_common.settings import NatsSettings
from fleetlab_common.testing.plugin import RestartableNats as NatsServer

SCHEMA = "svc"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def submitted() -> ExperimentSubmitted:
    return ExperimentSubmitted(
        experiment_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        project="mnist",
        options={"seed": 1},
        run=RunSpec(command=["true"]),
    )


@pytest.fixture
def settings(own_nats: NatsServer) -> NatsSettings:
    return NatsSettings(url=own_nats.url)


@pytest.fixture
async def broker(settings: NatsSettings) -> AsyncIterator[NatsBroker]:
    broker = make_broker(settings, "test")
    await broker.start()
    try:
        await ensure_streams(broker.connection.jetstream(), settings)
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(fresh_dsn, SCHEMA, None)
    pool = await create_pool(fresh_dsn, SCHEMA, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[OutboxRelay]:
    relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def js_of(broker: NatsBroker) -> JetStreamContext:
    return broker.connection.jetstream()


async def stored(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.messages)


async def stored_ids(js: JetStreamContext, stream: str) -> list[str]:
    """The Nats-Msg-Id of every message in ``stream``, in stream order."""
    info = await js.stream_info(stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        ids.append((msg.headers or {}).get("Nats-Msg-Id", "<no Nats-Msg-Id>"))
    return ids


async def outbox_rows(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox"))


async def commit(pool: asyncpg.Pool, *events: Event) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, *events)


# --- after commit, in order, with the event id --------------------------------------------------


async def test_events_of_a_rolled_back_transaction_are_never_published(
    pool: asyncpg.Pool, broker: NatsBroker
) -> None:
    lost, kept = submitted(), submitted()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TABLE state (id int)")
            await enqueue(conn, lost)
            raise Boom
    await commit(pool, kept)

    relay = OutboxRelay(pool, broker)
    # Drain every batch: nothing else is there to publish.
    assert await relay.flush() == 1
    assert await relay.flush() == 0

    js = js_of(broker)
    assert await stored_ids(js, "API") == [str(kept.id)]
    assert await outbox_rows(pool) == 0


async def test_committed_events_are_published_in_order_with_their_id_and_removed(
    pool: asyncpg.Pool, broker: NatsBroker
) -> None:
    first_tx = [submitted(), submitted()]
    stop = ExperimentStopRequested(experiment_id=first_tx[0].experiment_id)
    online = AgentOnline(agent_id="gpu-1", hostname="gpu-1.lab")
    second_tx = [stop, online, submitted()]
    await commit(pool, *first_tx)
    await commit(pool, *second_tx)
    api_events = [*first_tx, stop, second_tx[2]]

    js = js_of(broker)

    async def all_out() -> bool:
        return (
            await stored(js, "API") == 4
            and await stored(js, "SCHEDULER") == 1
            and await outbox_rows(pool) == 0
        )

    async with running(OutboxRelay(pool, broker)) as relay:
        relay.kick()
        await eventually(all_out)

    assert await stored_ids(js, "API") == [str(e.id) for e in api_events]
    assert await stored_ids(js, "SCHEDULER") == [str(online.id)]
    # What a consumer reads back is the event, with its type in a header.
    info = await js.stream_info("API")
    last = await js.get_msg("API", info.state.last_seq)
    assert ExperimentSubmitted.model_validate_json(last.data or b"") == second_tx[2]
    assert last.subject == "api.experiment.submitted"
    assert last.headers is not None
    assert last.headers["Fleetlab-Event-Type"] == "api.experiment.submitted"


async def test_a_kick_publishes_at_once_without_waiting_for_the_sweep(
    pool: asyncpg.Pool, broker: NatsBroker
) -> None:
    js = js_of(broker)
    first, second = submitted(), submitted()
    await commit(pool, first)
    # A sweep interval far longer than the test's patience: only kick() can explain a publish.
    async with running(OutboxRelay(pool, broker, interval=3600)) as relay:

        async def first_done() -> bool:
            return await outbox_rows(pool) == 0

        # The start-up pass took ``first``; the relay now sleeps until kicked or swept.
        await eventually(first_done)
        await commit(pool, second)
        relay.kick()

        async def second_stored() -> bool:
            return await stored(js, "API") == 2

        await eventually(second_stored, timeout=3)
    assert await stored_ids(js, "API") == [str(first.id), str(second.id)]


async def test_one_flush_publishes_at_most_a_batch(pool: asyncpg.Pool, broker: NatsBroker) -> None:
    events = [submitted() for _ in range(5)]
    await commit(pool, *events)
    relay = OutboxRelay(pool, broker, batch=2)
    assert [await relay.flush() for _ in range(4)] == [2, 2, 1, 0]
    assert await stored_ids(js_of(broker), "API") == [str(e.id) for e in events]


# --- duplicates are stored once -----------------------------------------------------------------


async def test_every_stream_has_a_duplicate_window(
    broker: NatsBroker, settings: NatsSettings
) -> None:
    js = js_of(broker)
    for name, subjects in STREAMS.items():
        config = (await js.stream_info(name)).config
        assert config.duplicate_window is not None
        assert config.duplicate_window == pytest.approx(settings.duplicate_window_s)
        assert config.duplicate_window > 0
        assert config.subjects == subjects


async def test_ensure_streams_is_idempotent_and_fixes_a_changed_window(
    broker: NatsBroker, settings: NatsSettings
) -> None:
    js = js_of(broker)
    await ensure_streams(js, settings)
    shorter = settings.model_copy(update={"duplicate_window_s": 30.0})
    await ensure_streams(js, shorter)
    assert (await js.stream_info("API")).config.duplicate_window == pytest.approx(30.0)


async def test_an_event_published_twice_is_stored_once(
    pool: asyncpg.Pool, broker: NatsBroker
) -> None:
    event = submitted()
    relay = OutboxRelay(pool, broker)
    await commit(pool, event)
    assert await relay.flush() == 1

    # The crash between JetStream's ack and the DELETE: the row is there again after restart.
    await commit(pool, event)
    assert await outbox_rows(pool) == 1
    assert await relay.flush() == 1
    assert await outbox_rows(pool) == 0

    # And a straight second publish with the same id is acknowledged as a duplicate.
    ack = await broker.publish(
        event.model_dump_json().encode(),
        event.subject(),
        headers=event.headers(),
        stream="API",
        timeout=5,
    )
    assert ack.duplicate is True

    js = js_of(broker)
    assert await stored_ids(js, "API") == [str(event.id)]


async def test_enqueueing_the_same_event_twice_keeps_one_row(pool: asyncpg.Pool) -> None:
    event = submitted()
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, event)
        await enqueue(conn, event, event)
    assert await outbox_rows(pool) == 1


# --- NATS away ----------------------------------------------------------------------------------


async def test_rows_wait_while_nats_is_unreachable_and_go_out_once_it_is_up(
    pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = NatsServer(tmp_path / "late-nats", free_port())
    settings = NatsSettings(url=server.url)
    broker = make_broker(settings, "test")
    # Nothing listens yet: the broker keeps trying to connect in the background.
    connecting = asyncio.create_task(broker.start())
    failures: list[BaseException] = []
    failed_twice = asyncio.Event()
    real_publish = broker.publish

    async def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real_publish(*args, **kwargs)
        except Exception as exc:
            failures.append(exc)
            if len(failures) >= 2:
                failed_twice.set()
            raise

    monkeypatch.setattr(broker, "publish", spy)
    events = [submitted(), submitted(), submitted()]
    await commit(pool, *events)
    try:
        async with running(OutboxRelay(pool, broker)) as relay:
            relay.kick()
            # The relay tried, failed, and tried again; the rows are still there.
            await asyncio.wait_for(failed_twice.wait(), 10)
            assert await outbox_rows(pool) == 3
            assert not connecting.done()

            await server.start()
            await asyncio.wait_for(connecting, 10)
            js = js_of(broker)
            await ensure_streams(js, settings)

            async def delivered() -> bool:
                return await outbox_rows(pool) == 0

            await eventually(delivered)
            assert await stored_ids(js, "API") == [str(e.id) for e in events]
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        await broker.stop()
        await server.stop()


async def test_rows_survive_a_nats_restart_and_are_stored_once(
    pool: asyncpg.Pool,
    own_nats: NatsServer,
    broker: NatsBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before, during = submitted(), [submitted(), submitted()]
    js = js_of(broker)
    attempted = asyncio.Event()
    real_publish = broker.publish

    async def spy(*args: Any, **kwargs: Any) -> Any:
        attempted.set()
        return await real_publish(*args, **kwargs)

    async with running(OutboxRelay(pool, broker)) as relay:
        await commit(pool, before)
        relay.kick()

        async def first_out() -> bool:
            return await outbox_rows(pool) == 0

        await eventually(first_out)

        await own_nats.stop()
        monkeypatch.setattr(broker, "publish", spy)
        await commit(pool, *during)
        relay.kick()
        # The relay is trying to publish into the void; nothing is deleted meanwhile.
        await asyncio.wait_for(attempted.wait(), 10)
        assert await outbox_rows(pool) == 2

        await own_nats.start()

        async def all_stored() -> bool:
            return await outbox_rows(pool) == 0

        await eventually(all_stored, timeout=20)

    assert await stored_ids(js, "API") == [str(e.id) for e in [before, *during]]


# --- the inbox ----------------------------------------------------------------------------------


async def test_first_delivery_is_true_once_per_consumer_and_event(pool: asyncpg.Pool) -> None:
    event, other = submitted(), submitted()
    async with pool.acquire() as conn:
        assert await first_delivery(conn, "scheduler", event) is True
        assert await first_delivery(conn, "scheduler", event) is False
        assert await first_delivery(conn, "webhooks", event) is True
        assert await first_delivery(conn, "scheduler", other) is True
        # A redelivery carries the same id in a new object.
        again = ExperimentSubmitted.model_validate_json(event.model_dump_json())
        assert await first_delivery(conn, "scheduler", again) is False


async def test_a_rolled_back_application_is_not_remembered(pool: asyncpg.Pool) -> None:
    event = submitted()

    class HandlerFailed(Exception):
        pass

    with pytest.raises(HandlerFailed):
        async with pool.acquire() as conn, conn.transaction():
            assert await first_delivery(conn, "scheduler", event) is True
            raise HandlerFailed
    # The effect did not commit, so the redelivered event must be applied again.
    async with pool.acquire() as conn, conn.transaction():
        assert await first_delivery(conn, "scheduler", event) is True


async def test_prune_forgets_only_old_event_ids(pool: asyncpg.Pool) -> None:
    old, recent = submitted(), submitted()
    async with pool.acquire() as conn:
        await first_delivery(conn, "c", old)
        await first_delivery(conn, "c", recent)
        await conn.execute(
            "UPDATE inbox SET processed_at = now() - interval '8 days' WHERE event_id = $1",
            old.id,
        )
        await prune_inbox(conn, keep_days=7)
        assert await first_delivery(conn, "c", old) is True
        assert await first_delivery(conn, "c", recent) is False


# --- InboxBatch: events handled side by side share one transaction ---------------------------


def recorder(event: ExperimentSubmitted) -> Callable[[Conn], Awaitable[str]]:
    async def change(conn: Conn) -> str:
        await conn.execute("INSERT INTO applied VALUES ($1, txid_current())", event.experiment_id)
        return str(event.experiment_id)

    return change


async def applied(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS applied (event_id uuid, txid bigint)")
        return await conn.fetch("SELECT event_id, txid FROM applied")


async def test_events_handed_over_together_commit_in_one_transaction(pool: asyncpg.Pool) -> None:
    await applied(pool)  # the table the changes write to
    inbox = InboxBatch(lambda: pool, "c")
    events = [submitted() for _ in range(20)]

    results = await asyncio.gather(*(inbox.apply(e, recorder(e)) for e in events))

    assert results == [str(e.experiment_id) for e in events]
    rows = await applied(pool)
    assert sorted(r["event_id"] for r in rows) == sorted(e.experiment_id for e in events)
    # The first is applied at once; those that came while it was, in one more transaction.
    assert len({r["txid"] for r in rows}) <= 2


async def test_a_redelivered_event_is_applied_once(pool: asyncpg.Pool) -> None:
    await applied(pool)  # the table the changes write to
    inbox = InboxBatch(lambda: pool, "c")
    event = submitted()

    first = await inbox.apply(event, recorder(event))
    again = await asyncio.gather(
        inbox.apply(event, recorder(event)),
        inbox.apply(event, recorder(event)),
    )

    assert first == str(event.experiment_id)
    assert again == [None, None]
    assert len(await applied(pool)) == 1
    # Another consumer has an inbox of its own.
    assert await InboxBatch(lambda: pool, "other").apply(event, recorder(event)) is not None


async def test_a_failing_change_fails_only_its_event(pool: asyncpg.Pool) -> None:
    await applied(pool)  # the table the changes write to
    inbox = InboxBatch(lambda: pool, "c")
    good = [submitted() for _ in range(5)]
    bad = submitted()

    async def boom(conn: Conn) -> str:
        await conn.execute("INSERT INTO applied VALUES ($1, 0)", bad.experiment_id)
        raise ValueError("bad event")

    calls = [inbox.apply(e, recorder(e)) for e in good[:3]]
    calls.append(inbox.apply(bad, boom))
    calls += [inbox.apply(e, recorder(e)) for e in good[3:]]
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [str(e.experiment_id) for e in good]
    assert sorted(r["event_id"] for r in await applied(pool)) == sorted(
        e.experiment_id for e in good
    )
    # The failed event was not recorded as applied: its redelivery applies it.
    assert await inbox.apply(bad, recorder(bad)) == str(bad.experiment_id)


async def test_handlers_waiting_on_a_cancelled_batch_are_not_left_hanging(
    pool: asyncpg.Pool,
) -> None:
    inbox = InboxBatch(lambda: pool, "c")
    entered = asyncio.Event()

    async def stuck(conn: Conn) -> None:
        entered.set()
        await asyncio.Event().wait()

    waiting = [asyncio.create_task(inbox.apply(submitted(), stuck))]
    await entered.wait()
    waiting.append(asyncio.create_task(inbox.apply(submitted(), stuck)))  # queued behind it
    await asyncio.sleep(0)
    assert inbox._task is not None
    inbox._task.cancel()  # the service stopping

    done, _ = await asyncio.wait(waiting, timeout=5)
    assert len(done) == 2 and all(t.cancelled() for t in done)


async def test_a_task_that_lost_a_cancel_is_cancelled_again() -> None:
    # What asyncio.wait_for can do in Python 3.11 when a reply and the cancel meet: the cancel
    # is lost and the task goes on to its next wait.
    async def loses_the_first_cancel() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        await asyncio.sleep(30)

    task = asyncio.create_task(loses_the_first_cancel())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(task, every_s=0.05), 5)
    assert task.cancelled()


# --- NATS back without its JetStream store: streams and consumers declared again -------------


def async_true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


async def test_events_flow_again_after_nats_lost_its_store(own_nats: NatsServer) -> None:
    settings = NatsSettings(url=own_nats.url)
    broker = make_broker(settings, "restore-test")
    got: list[uuid.UUID] = []

    @event_subscriber(broker, ExperimentSubmitted, "restore", settings)
    async def handle(event: ExperimentSubmitted) -> None:
        got.append(event.experiment_id)

    await broker.start()
    try:
        before = submitted()
        await publish_event(broker, before)
        await eventually(async_true(lambda: got == [before.experiment_id]), timeout=20)

        await own_nats.stop()
        shutil.rmtree(own_nats.store)  # the server comes back knowing no stream, no consumer
        await own_nats.start()

        after = submitted()

        async def publish_when_back() -> None:
            while True:
                try:
                    await publish_event(broker, after, timeout=1.0)
                    return
                except Exception:  # reconnecting, or the streams not declared yet
                    await asyncio.sleep(0.1)

        await asyncio.wait_for(publish_when_back(), 30)
        await eventually(async_true(lambda: after.experiment_id in got), timeout=20)
        assert got.count(after.experiment_id) == 1
    finally:
        await broker.stop()
