"""Logstream on a real Postgres (the service layer), then through a real NATS.

What a viewer sees: every line once, in ``seq`` order, filtered and paged as asked, each page
small enough to travel as one NATS reply, and a query that waits for a run's last batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import pytest
from faststream.nats import NatsBroker

from fleetlab_common.broker import publish_event
from fleetlab_common.db.pool import create_pool
from fleetlab_common.embedded import start_nats, stop_process
from fleetlab_common.events import LogLine, LogLinesAppended, Rpc
from fleetlab_common.ids import uuid7
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_logstream import repository
from fleetlab_logstream.app import build_service, migrate
from fleetlab_logstream.schemas import LinesPage, LinesQuery
from fleetlab_logstream.service import Logstream
from fleetlab_logstream.settings import LogstreamSettings

T0 = datetime(2025, 1, 1, tzinfo=UTC)
Stream = Literal["stdout", "stderr"]


def batch(
    experiment_id: uuid.UUID,
    seqs: range | list[int],
    *,
    attempt: int = 1,
    stream: Stream | Callable[[int], Stream] = "stdout",
    text: Callable[[int], str] = lambda seq: f"line {seq}",
) -> LogLinesAppended:
    return LogLinesAppended(
        experiment_id=experiment_id,
        agent_id="agent-a",
        attempt=attempt,
        lines=[
            LogLine(
                seq=seq,
                stream=stream(seq) if callable(stream) else stream,
                ts=T0 + timedelta(milliseconds=seq),
                line=text(seq),
            )
            for seq in seqs
        ],
    )


def texts(page: LinesPage) -> list[str]:
    return [ln.line for ln in page.lines]


def reply_size(page: LinesPage) -> int:
    """Bytes of the page as ``rpc.logstream.lines`` sends it: compact JSON in UTF-8 (the NATS
    test below checks this against a real reply)."""
    return len(page.model_dump_json().encode())


MakeLogstream = Callable[..., Awaitable[Logstream]]


@pytest.fixture
async def make_logstream(fresh_dsn: str) -> AsyncIterator[MakeLogstream]:
    pools: list[asyncpg.Pool] = []

    async def make(**overrides: Any) -> Logstream:
        settings = LogstreamSettings(
            postgres=PostgresSettings(dsn=fresh_dsn),
            nats=NatsSettings(url="nats://127.0.0.1:1"),  # never dialled
            **overrides,
        )
        if not pools:
            await migrate(settings)
        pool = await create_pool(fresh_dsn, "logstream")
        pools.append(pool)
        return Logstream(settings, pool)

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture
async def ls(make_logstream: MakeLogstream) -> Logstream:
    return await make_logstream()


async def read_all(ls: Logstream, query: LinesQuery) -> tuple[list[LinesPage], list[LogLine]]:
    """Follow ``next_seq`` from page to page, as a viewer does."""
    pages = [await ls.query(query)]
    while pages[-1].next_seq is not None:
        assert len(pages) < 1000, "paging does not advance"
        pages.append(await ls.query(query.model_copy(update={"from_seq": pages[-1].next_seq})))
    return pages, [ln for p in pages for ln in p.lines]


async def test_batches_are_stored_and_returned_in_seq_order(ls: Logstream) -> None:
    eid = uuid7()
    await ls.on_lines(batch(eid, range(4, 7)))  # a later batch arrives first
    await ls.on_lines(batch(eid, range(1, 4)))
    await ls.on_lines(batch(uuid7(), range(1, 3)))  # another run's lines stay apart

    page = await ls.query(LinesQuery(experiment_id=eid))
    assert [ln.seq for ln in page.lines] == [1, 2, 3, 4, 5, 6]
    assert texts(page) == [f"line {i}" for i in range(1, 7)]
    assert page.lines[0] == LogLine(
        seq=1, stream="stdout", ts=T0 + timedelta(milliseconds=1), line="line 1"
    )
    assert (page.attempt, page.stored, page.next_seq) == (1, 6, None)


async def test_a_redelivered_batch_is_stored_once(ls: Logstream) -> None:
    eid = uuid7()
    first = batch(eid, range(1, 4))
    await ls.on_lines(first)
    await ls.on_lines(first)  # JetStream redelivers
    # The agent resends the same lines as a new event (a retry after a lost ack).
    await ls.on_lines(batch(eid, range(2, 5)))

    page = await ls.query(LinesQuery(experiment_id=eid))
    assert [ln.seq for ln in page.lines] == [1, 2, 3, 4]
    assert page.stored == 4


async def test_the_ranks_of_a_multi_worker_run_read_back_as_one_log(ls: Logstream) -> None:
    # Two ranks share one sequence (rank r's k-th line is k * 2 + r + 1): their batches cover
    # interleaved numbers, and rank 1 runs ahead of rank 0.
    eid = uuid7()

    def rank_batch(rank: int, ks: range) -> LogLinesAppended:
        return LogLinesAppended(
            experiment_id=eid,
            agent_id=f"agent-{rank}",
            lines=[
                LogLine(
                    seq=k * 2 + rank + 1,
                    stream="stdout",
                    ts=T0,
                    line=f"rank {rank} line {k}",
                    rank=rank,
                )
                for k in ks
            ],
        )

    for b in [rank_batch(1, range(0, 5)), rank_batch(1, range(5, 10)), rank_batch(0, range(0, 4))]:
        await ls.on_lines(b)
    await ls.on_lines(rank_batch(0, range(0, 4)))  # delivered again
    await ls.on_lines(rank_batch(0, range(4, 10)))

    page = await ls.query(LinesQuery(experiment_id=eid))
    assert [ln.seq for ln in page.lines] == list(range(1, 21))
    assert page.stored == 20
    assert [ln.rank for ln in page.lines[:4]] == [0, 1, 0, 1]
    assert texts(page)[:3] == ["rank 0 line 0", "rank 1 line 0", "rank 0 line 1"]
    # Pages cut anywhere come out whole, in order, with no line twice.
    seen: list[int] = []
    next_seq: int | None = 1
    while next_seq is not None:
        part = await ls.query(LinesQuery(experiment_id=eid, from_seq=next_seq, limit=3))
        seen += [ln.seq for ln in part.lines]
        next_seq = part.next_seq
    assert seen == list(range(1, 21))
    rest = await ls.query(LinesQuery(experiment_id=eid, from_seq=8, to_seq=12))
    assert [ln.seq for ln in rest.lines] == [8, 9, 10, 11, 12]


async def test_stream_filter_and_seq_range(ls: Logstream) -> None:
    eid = uuid7()
    await ls.on_lines(
        batch(eid, range(1, 11), stream=lambda seq: "stderr" if seq % 3 == 0 else "stdout")
    )

    err = await ls.query(LinesQuery(experiment_id=eid, stream="stderr"))
    assert [(ln.seq, ln.stream) for ln in err.lines] == [
        (3, "stderr"),
        (6, "stderr"),
        (9, "stderr"),
    ]
    assert err.stored == 10  # the whole run, not the filtered part

    window = await ls.query(LinesQuery(experiment_id=eid, from_seq=4, to_seq=7))
    assert [ln.seq for ln in window.lines] == [4, 5, 6, 7]
    assert window.next_seq is None

    tail = await ls.query(LinesQuery(experiment_id=eid, from_seq=9))
    assert [ln.seq for ln in tail.lines] == [9, 10]
    both = await ls.query(LinesQuery(experiment_id=eid, stream="stdout", from_seq=5, to_seq=9))
    assert [ln.seq for ln in both.lines] == [5, 7, 8]
    assert (await ls.query(LinesQuery(experiment_id=eid, from_seq=11))).lines == []


async def test_paging_by_limit(ls: Logstream) -> None:
    eid = uuid7()
    await ls.on_lines(batch(eid, range(1, 11)))

    pages, lines = await read_all(ls, LinesQuery(experiment_id=eid, limit=4))
    assert [[ln.seq for ln in p.lines] for p in pages] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [p.next_seq for p in pages] == [5, 9, None]
    assert [ln.seq for ln in lines] == list(range(1, 11))

    # Exactly `limit` lines left: the last page says so without an empty page after it.
    exact = await ls.query(LinesQuery(experiment_id=eid, from_seq=7, limit=4))
    assert ([ln.seq for ln in exact.lines], exact.next_seq) == ([7, 8, 9, 10], None)

    # Paging a filtered stream resumes the filter.
    await ls.on_lines(batch(eid, range(11, 21), stream="stderr"))
    _, err = await read_all(ls, LinesQuery(experiment_id=eid, stream="stderr", limit=3))
    assert [ln.seq for ln in err] == list(range(11, 21))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(lambda seq: f"{seq:04d} " + "x" * 300, id="ascii"),
        # A progress bar, and coloured output: in JSON each of these characters takes six
        # bytes (\u2588, \u001b), not one.
        pytest.param(lambda seq: f"{seq:04d} " + "\u2588" * 300, id="progress-bar"),
        pytest.param(lambda seq: f"\x1b[32m{seq:04d} ok\x1b[0m" + "\x1b[K" * 100, id="ansi"),
    ],
)
async def test_paging_by_reply_size(
    make_logstream: MakeLogstream, text: Callable[[int], str]
) -> None:
    max_bytes = 8 * 1024
    ls = await make_logstream(max_reply_bytes=max_bytes)
    eid = uuid7()
    await ls.on_lines(batch(eid, range(1, 101), text=text))

    pages, lines = await read_all(ls, LinesQuery(experiment_id=eid))
    assert len(pages) > 1
    sizes = [reply_size(p) for p in pages]
    assert max(sizes) <= max_bytes, f"a reply of {max(sizes)} bytes exceeds {max_bytes}"
    assert [ln.seq for ln in lines] == list(range(1, 101))
    assert [ln.line for ln in lines] == [text(seq) for seq in range(1, 101)]


async def test_a_line_longer_than_the_reply_limit_still_comes_through(
    make_logstream: MakeLogstream,
) -> None:
    ls = await make_logstream(max_reply_bytes=1024)
    eid = uuid7()
    await ls.on_lines(
        batch(eid, range(1, 4), text=lambda seq: str(seq) * (2000 if seq == 2 else 1))
    )

    _, lines = await read_all(ls, LinesQuery(experiment_id=eid))
    assert [ln.seq for ln in lines] == [1, 2, 3]  # one line per page at worst, never stuck


async def test_latest_attempt_unless_one_is_asked_for(ls: Logstream) -> None:
    eid = uuid7()
    await ls.on_lines(batch(eid, range(1, 4), attempt=1, text=lambda s: f"first {s}"))
    await ls.on_lines(batch(eid, range(1, 3), attempt=2, text=lambda s: f"second {s}"))

    latest = await ls.query(LinesQuery(experiment_id=eid))
    assert (latest.attempt, latest.stored, texts(latest)) == (2, 2, ["second 1", "second 2"])
    first = await ls.query(LinesQuery(experiment_id=eid, attempt=1))
    assert (first.attempt, first.stored, texts(first)) == (1, 3, ["first 1", "first 2", "first 3"])

    nothing = await ls.query(LinesQuery(experiment_id=uuid7()))
    assert (nothing.attempt, nothing.lines, nothing.stored) == (None, [], 0)


@pytest.fixture
def first_count(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a query has counted the stored lines (so it is now waiting for more)."""
    counted = asyncio.Event()
    count_lines = repository.count_lines

    async def spy(*args: Any) -> int:
        n = await count_lines(*args)
        counted.set()
        return n

    monkeypatch.setattr(repository, "count_lines", spy)
    return counted


@pytest.mark.parametrize("writer", ["same-process", "another-replica"])
async def test_min_count_waits_for_a_late_batch(
    make_logstream: MakeLogstream, first_count: asyncio.Event, writer: str
) -> None:
    ls = await make_logstream()
    # Another logstream process stores the last batch: no in-process wake-up reaches this one.
    other = await make_logstream() if writer == "another-replica" else ls
    eid = uuid7()
    await ls.on_lines(batch(eid, range(1, 4)))

    loop = asyncio.get_running_loop()
    began = loop.time()
    query = asyncio.create_task(ls.query(LinesQuery(experiment_id=eid, min_count=6, wait_s=10)))
    await asyncio.wait_for(first_count.wait(), 5)
    assert not query.done()
    await other.on_lines(batch(eid, range(4, 7)))

    page = await asyncio.wait_for(query, 10)
    assert [ln.seq for ln in page.lines] == [1, 2, 3, 4, 5, 6]
    assert page.stored == 6
    assert loop.time() - began < 5, "it waited out wait_s instead of seeing the batch"


async def test_min_count_gives_up_after_wait_s(ls: Logstream) -> None:
    eid = uuid7()
    await ls.on_lines(batch(eid, range(1, 4)))

    loop = asyncio.get_running_loop()
    began = loop.time()
    page = await ls.query(LinesQuery(experiment_id=eid, min_count=10, wait_s=0.3))
    elapsed = loop.time() - began
    assert [ln.seq for ln in page.lines] == [1, 2, 3]
    assert page.stored == 3
    assert 0.3 <= elapsed < 3

    # A run that printed nothing at all: the answer is empty, after the wait.
    empty = await ls.query(LinesQuery(experiment_id=uuid7(), min_count=1, wait_s=0.1))
    assert (empty.attempt, empty.lines) == (None, [])


# --- through NATS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Its own server: the durable consumer `logstream-agent-log-appended` is shared by every
    # logstream on a server, and another module's would take this module's batches.
    proc, url = start_nats(tmp_path_factory.mktemp("logstream-nats"))
    try:
        yield url
    finally:
        stop_process(proc)


async def test_lines_are_stored_from_jetstream_and_answered_over_rpc(
    fresh_dsn: str, module_nats_url: str
) -> None:
    settings = LogstreamSettings(
        postgres=PostgresSettings(dsn=fresh_dsn),
        nats=NatsSettings(url=module_nats_url),
    )
    service, state = build_service(settings)
    await service.start_db()
    await service.broker.start()
    client = NatsBroker(module_nats_url)
    try:
        await service.started()
        await client.connect()
        eid = uuid7()
        second = batch(eid, range(4, 7), stream="stderr")
        await publish_event(client, second)
        await publish_event(client, batch(eid, range(1, 4)))
        await publish_event(client, second)  # published again: stored once

        async def ask(**query: Any) -> dict[str, Any]:
            reply = await client.request(
                {"experiment_id": str(eid), **query}, Rpc.LOG_LINES, timeout=15.0
            )
            body: dict[str, Any] = await reply.decode()  # type: ignore[assignment]
            return body

        # The batches may still be on their way: min_count waits for them.
        body = await ask(min_count=6, wait_s=10)
        assert [(ln["seq"], ln["stream"], ln["line"]) for ln in body["lines"]] == [
            (1, "stdout", "line 1"),
            (2, "stdout", "line 2"),
            (3, "stdout", "line 3"),
            (4, "stderr", "line 4"),
            (5, "stderr", "line 5"),
            (6, "stderr", "line 6"),
        ]
        assert (body["attempt"], body["stored"], body["next_seq"]) == (1, 6, None)

        page = await ask(from_seq=2, limit=2)
        assert ([ln["seq"] for ln in page["lines"]], page["next_seq"]) == ([2, 3], 4)

        # A long run with a progress bar: 1.8 MB, well over NATS's 1 MiB payload limit as one
        # reply, so it must come in pages.
        big = uuid7()
        for start in range(1, 601, 50):
            await state.get().on_lines(
                batch(big, range(start, start + 50), text=lambda seq: f"{seq} " + "\u2588" * 1000)
            )
        seqs: list[int] = []
        next_seq: int | None = 1
        while next_seq is not None:
            reply = await client.request(
                {"experiment_id": str(big), "from_seq": next_seq}, Rpc.LOG_LINES, timeout=5.0
            )
            assert len(reply.body) <= settings.max_reply_bytes
            answer: dict[str, Any] = await reply.decode()  # type: ignore[assignment]
            seqs += [ln["seq"] for ln in answer["lines"]]
            next_seq = answer["next_seq"]
        assert seqs == list(range(1, 601))
    finally:
        await client.stop()
        await service.stopping()
        await service.broker.stop()
        await service.closed()
