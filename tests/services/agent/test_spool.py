"""The agent's spool on a real nats-server: nothing reported is lost while NATS is away or
across an agent restart, and order is kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import nats

from fleetlab_agent.spool import Spool
from fleetlab_common.broker import ensure_streams, make_broker
from fleetlab_common.events import LogLine, LogLinesAppended, utcnow
from fleetlab_common.settings import NatsSettings
from fleetlab_common.testing.plugin import RestartableNats


def batch(experiment: uuid.UUID, seq: int) -> LogLinesAppended:
    return LogLinesAppended(
        experiment_id=experiment,
        agent_id="spooler",
        lines=[LogLine(seq=seq, stream="stdout", ts=utcnow(), line=f"line {seq}")],
    )


async def stored_seqs(url: str, experiment: uuid.UUID) -> list[int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"agent.log.appended.{experiment}", ordered_consumer=True)
        seqs: list[int] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return seqs
            seqs += [ln["seq"] for ln in json.loads(msg.data)["lines"]]
    finally:
        await nc.close()


async def wait_stored(url: str, experiment: uuid.UUID, count: int) -> list[int]:
    async with asyncio.timeout(30):
        while len(seqs := await stored_seqs(url, experiment)) < count:
            await asyncio.sleep(0.1)
    return seqs


async def test_events_wait_on_disk_while_nats_is_away_and_go_in_order(
    own_nats: RestartableNats, tmp_path: Path
) -> None:
    settings = NatsSettings(url=own_nats.url)
    broker = make_broker(settings, "spool-test")
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings)
    spool = Spool(tmp_path / "spool", broker)
    spool.start()
    experiment = uuid.uuid4()
    try:
        for seq in range(1, 51):
            await spool.put(batch(experiment, seq))
        assert await spool.drained(10)

        await own_nats.stop()  # NATS goes away mid-run
        for seq in range(51, 151):
            await spool.put(batch(experiment, seq))
        assert spool.size() > 0  # kept on disk meanwhile

        await own_nats.start()
        seqs = await wait_stored(own_nats.url, experiment, 150)
        assert seqs == list(range(1, 151))
    finally:
        await spool.stop()
        await broker.stop()


async def test_what_a_stopped_agent_left_unsent_goes_out_when_it_starts_again(
    own_nats: RestartableNats, tmp_path: Path
) -> None:
    settings = NatsSettings(url=own_nats.url)
    experiment = uuid.uuid4()
    await own_nats.stop()
    first = Spool(tmp_path / "spool", make_broker(settings, "unused"))
    for seq in range(1, 21):
        await first.put(batch(experiment, seq))
    await first.stop()  # never sent anything: NATS was away the whole life of this agent

    await own_nats.start()
    broker = make_broker(settings, "spool-test-2")
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings)
    second = Spool(tmp_path / "spool", broker)
    second.start()
    try:
        assert await wait_stored(own_nats.url, experiment, 20) == list(range(1, 21))
    finally:
        await second.stop()
        await broker.stop()


async def test_records_an_earlier_agent_wrote_in_the_older_form_are_sent_too(
    own_nats: RestartableNats, tmp_path: Path
) -> None:
    # Before line batches were written pre-encoded, a record was one JSON object holding the
    # payload as a string; an agent upgraded with such records unsent must still send them.
    settings = NatsSettings(url=own_nats.url)
    experiment = uuid.uuid4()
    directory = tmp_path / "spool"
    directory.mkdir()
    old = [batch(experiment, seq) for seq in (1, 2)]
    records = [
        {
            "subject": e.subject(),
            "stream": e.STREAM,
            "headers": e.headers(),
            "payload": e.model_dump_json(),
        }
        for e in old
    ]
    (directory / f"{0:012d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    broker = make_broker(settings, "spool-test-3")
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings)
    spool = Spool(directory, broker)
    spool.start()
    try:
        await spool.put(
            LogLinesAppended.encode(
                experiment,
                "spooler",
                1,
                [{"seq": 3, "stream": "stdout", "ts": "2026-01-01T00:00:00Z", "line": "line 3"}],
            )
        )
        assert await wait_stored(own_nats.url, experiment, 3) == [1, 2, 3]
    finally:
        await spool.stop()
        await broker.stop()


async def test_a_full_spool_makes_writers_wait_instead_of_dropping(
    own_nats: RestartableNats, tmp_path: Path
) -> None:
    settings = NatsSettings(url=own_nats.url)
    await own_nats.stop()
    spool = Spool(tmp_path / "spool", make_broker(settings, "unused"), max_bytes=2000)
    experiment = uuid.uuid4()
    written: list[int] = []

    async def write_all() -> None:
        for s in range(1, 40):
            await spool.put(batch(experiment, s))
            written.append(s)

    writer = asyncio.create_task(write_all())
    async with asyncio.timeout(5):
        while spool.size() < 2000:
            await asyncio.sleep(0.01)
    assert not writer.done() and len(written) < 39  # waiting for room, nothing dropped
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    await spool.stop()
