"""Logstream's upkeep on a real Postgres: a finished run's log archived to the artifact store
(once every line is in, or after waiting), retention per project by age and size, agents'
own logs bounded, metric batches stored once with their summaries; LTTB on its own."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fleetlab_common.artifacts import ArtifactNotFoundError, LocalArtifactStore
from fleetlab_common.db.pool import create_pool
from fleetlab_common.events import (
    AgentLogAppended,
    AgentLogLine,
    ExperimentAssigned,
    ExperimentFinished,
    LogLine,
    LogLinesAppended,
    MetricPoint,
    MetricsReported,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_logstream.app import migrate
from fleetlab_logstream.lttb import lttb
from fleetlab_logstream.schemas import AgentLogQuery, LinesQuery, MetricsQuery
from fleetlab_logstream.service import Logstream, archive_key
from fleetlab_logstream.settings import LogstreamSettings

T0 = datetime(2025, 1, 1, tzinfo=UTC)
MakeLogstream = Callable[..., Awaitable[Logstream]]


def lines(eid: uuid.UUID, seqs: range, attempt: int = 1, size: int = 10) -> LogLinesAppended:
    return LogLinesAppended(
        experiment_id=eid,
        agent_id="a",
        attempt=attempt,
        lines=[LogLine(seq=s, stream="stdout", ts=T0, line=f"{s:0{size}d}"[-size:]) for s in seqs],
    )


def finished(eid: uuid.UUID, log_lines: int, at: datetime | None = None) -> ExperimentFinished:
    event = ExperimentFinished(
        experiment_id=eid, agent_id="a", status="succeeded", log_lines=log_lines
    )
    return event if at is None else event.model_copy(update={"occurred_at": at})


@pytest.fixture
async def make_logstream(fresh_dsn: str, tmp_path: Path) -> AsyncIterator[MakeLogstream]:
    pools: list[asyncpg.Pool] = []

    async def make(**overrides: Any) -> Logstream:
        settings = LogstreamSettings(
            postgres=PostgresSettings(dsn=fresh_dsn),
            nats=NatsSettings(url="nats://127.0.0.1:1"),
            **overrides,
        )
        if not pools:
            await migrate(settings)
        pool = await create_pool(fresh_dsn, "logstream")
        pools.append(pool)
        store = LocalArtifactStore(tmp_path / "artifacts", base_url="http://x", secret=b"s")
        return Logstream(settings, pool, store)

    yield make
    for pool in pools:
        await pool.close()


async def archived(ls: Logstream, eid: uuid.UUID) -> list[dict[str, Any]]:
    assert ls.store is not None
    data = await ls.store.get_bytes(archive_key(eid, 1))
    return [json.loads(line) for line in data.decode().splitlines()]


async def test_a_finished_run_is_archived_once_every_line_is_in(
    make_logstream: MakeLogstream,
) -> None:
    ls = await make_logstream()
    eid = uuid7()
    await ls.on_lines(lines(eid, range(1, 4)))
    await ls.on_finished(finished(eid, 5))
    assert await ls.archive_pending() == 0  # lines 4 and 5 are still on their way

    await ls.on_lines(lines(eid, range(4, 6)))
    assert await ls.archive_pending() == 1
    got = await archived(ls, eid)
    assert [r["seq"] for r in got] == [1, 2, 3, 4, 5]
    assert set(got[0]) == {"seq", "stream", "ts", "line"}
    assert await ls.archive_pending() == 0  # done once


async def test_a_run_that_printed_nothing_gets_no_log_file(make_logstream: MakeLogstream) -> None:
    ls = await make_logstream()
    eid = uuid7()
    await ls.on_finished(finished(eid, 0))

    assert await ls.archive_pending() == 0  # nothing left to archive
    async with ls.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT archived_at, archive_key, archive_complete FROM runs WHERE experiment_id = $1",
            eid,
        )
    assert row["archived_at"] is not None and row["archive_complete"] is True
    assert row["archive_key"] is None
    assert ls.store is not None
    with pytest.raises(ArtifactNotFoundError):
        await ls.store.get_bytes(archive_key(eid, 1))


async def test_a_run_whose_last_lines_never_come_is_archived_after_the_wait(
    make_logstream: MakeLogstream,
) -> None:
    ls = await make_logstream(archive_wait_s=0)
    eid = uuid7()
    await ls.on_lines(lines(eid, range(1, 3)))
    await ls.on_finished(finished(eid, 9, at=datetime.now(UTC) - timedelta(seconds=1)))
    assert await ls.archive_pending() == 1
    assert [r["seq"] for r in await archived(ls, eid)] == [1, 2]
    async with ls.pool.acquire() as conn:
        complete = await conn.fetchval(
            "SELECT archive_complete FROM runs WHERE experiment_id = $1", eid
        )
    assert complete is False


async def test_retention_by_age_and_by_size_per_project(make_logstream: MakeLogstream) -> None:
    ls = await make_logstream(
        retention={"max_age_days": 30, "max_bytes": None},
        retention_projects={"small": {"max_age_days": None, "max_bytes": 250}},
    )
    now = datetime.now(UTC)

    async def run(project: str, age_days: float) -> uuid.UUID:
        eid = uuid7()
        await ls.on_assigned(
            ExperimentAssigned(
                experiment_id=eid, agent_id="a", project=project, run=RunSpec(command=["x"])
            )
        )
        await ls.on_lines(lines(eid, range(1, 11)))  # 100 bytes of log
        await ls.on_finished(finished(eid, 10, at=now - timedelta(days=age_days)))
        return eid

    old, young = await run("big", 40), await run("big", 1)
    s1, s2, s3 = await run("small", 3), await run("small", 2), await run("small", 1)
    await ls.archive_pending()

    assert await ls.apply_retention() == 2
    for eid, kept in [(old, False), (young, True), (s1, False), (s2, True), (s3, True)]:
        page = await ls.query(LinesQuery(experiment_id=eid))
        assert (len(page.lines) == 10) is kept, eid
        assert ls.store is not None
        assert await ls.store.exists(archive_key(eid, 1)) is kept
    assert await ls.apply_retention() == 0


async def test_an_agents_own_log_is_bounded(make_logstream: MakeLogstream) -> None:
    ls = await make_logstream(agent_log_lines=5)
    for start in (0, 4, 8):
        await ls.on_agent_log(
            AgentLogAppended(
                agent_id="gpu-1",
                instance_id=uuid7(),
                lines=[
                    AgentLogLine(ts=T0, level="info", line=f"l{i}") for i in range(start, start + 4)
                ],
            )
        )
    batch = AgentLogAppended(
        agent_id="gpu-1",
        instance_id=uuid7(),
        lines=[AgentLogLine(ts=T0, level="warning", line="w")],
    )
    await ls.on_agent_log(batch)
    await ls.on_agent_log(batch)  # redelivered: stored once
    page = await ls.agent_log(AgentLogQuery(agent_id="gpu-1"))
    assert [ln.line for ln in page.lines][-2:] == ["l11", "w"]
    assert len(page.lines) == 13
    await ls.apply_retention()
    page = await ls.agent_log(AgentLogQuery(agent_id="gpu-1"))
    assert [ln.line for ln in page.lines] == ["l8", "l9", "l10", "l11", "w"]


async def test_metric_batches_are_stored_once_with_last_min_max(
    make_logstream: MakeLogstream,
) -> None:
    ls = await make_logstream()
    eid = uuid7()

    def report(values: list[float], first_step: int) -> MetricsReported:
        return MetricsReported(
            experiment_id=eid,
            agent_id="a",
            points=[
                MetricPoint(name="loss", value=v, step=first_step + i, ts=T0)
                for i, v in enumerate(values)
            ],
            scores={"acc": 0.5},
        )

    first = report([3.0, 1.0, 2.0], 0)
    await ls.on_metrics(first)
    await ls.on_metrics(first)  # redelivered
    await ls.on_metrics(report([5.0, 4.0], 3))

    page = await ls.metrics(MetricsQuery(experiment_id=eid))
    assert [p.value for p in page.series[0].points] == [3.0, 1.0, 2.0, 5.0, 4.0]
    (summary,) = page.summary
    assert (summary.last, summary.min, summary.max, summary.count) == (4.0, 1.0, 5.0, 5)
    assert summary.last_step == 4
    assert page.scores == {"acc": 0.5}

    raw = await ls.metrics(MetricsQuery(experiment_id=eid, points=0, limit=2))
    assert raw.raw is not None and [p.value for p in raw.raw] == [3.0, 1.0]
    assert raw.next_after_id == raw.raw[-1].id


async def test_raw_points_page_through_batches_and_names_exactly_once(
    make_logstream: MakeLogstream,
) -> None:
    ls = await make_logstream()
    eid = uuid7()
    # Batches with two metrics each, of different sizes: pages cut inside and across them.
    for batch in range(5):
        await ls.on_metrics(
            MetricsReported(
                experiment_id=eid,
                agent_id="a",
                points=[
                    MetricPoint(
                        name=name,
                        value=batch * 100 + i,
                        step=batch * 100 + i,
                        ts=T0,
                        cumulative=name == "time",
                        metadata={"i": i} if name == "loss" and i == 1 else None,
                    )
                    for i in range(batch + 2)
                    for name in ("loss", "time")
                ],
            )
        )
    every: list[tuple[str, float]] = []
    ids: list[int] = []
    after = 0
    while True:
        page = await ls.metrics(MetricsQuery(experiment_id=eid, points=0, limit=3, after_id=after))
        assert page.raw is not None
        every += [(p.name, p.value) for p in page.raw]
        ids += [p.id for p in page.raw]
        if page.next_after_id is None:
            break
        after = page.next_after_id
    assert len(every) == len(set(every)) == 2 * sum(b + 2 for b in range(5))
    assert ids == sorted(ids)
    # Within a metric, points keep the order they came in.
    for name in ("loss", "time"):
        values = [v for n, v in every if n == name]
        assert values == sorted(values)
    whole = await ls.metrics(MetricsQuery(experiment_id=eid, points=0, limit=1000))
    assert whole.raw is not None
    assert all(p.cumulative for p in whole.raw if p.name == "time")
    assert not any(p.cumulative for p in whole.raw if p.name == "loss")
    assert [p.metadata for p in whole.raw if p.metadata] == [{"i": 1}] * 5
    only_loss = await ls.metrics(
        MetricsQuery(experiment_id=eid, points=0, limit=1000, names=["loss"])
    )
    assert only_loss.raw is not None and {p.name for p in only_loss.raw} == {"loss"}


def test_lttb_keeps_the_ends_and_the_peaks() -> None:
    xs = [float(i) for i in range(10_000)]
    ys = [math.sin(i / 100) for i in range(10_000)]
    ys[7777] = 100.0
    keep = lttb(xs, ys, 300)
    assert len(keep) == 300
    assert keep[0] == 0 and keep[-1] == 9999 and keep == sorted(set(keep))
    assert 7777 in keep
    assert lttb(xs[:10], ys[:10], 300) == list(range(10))
    with pytest.raises(ValueError, match="differ"):
        lttb([1.0], [], 3)
