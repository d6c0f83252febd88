"""Logstream's hot paths read decoded JSON without a model per line or point: what they store
is what the model path stores, a redelivery is stored once, a malformed body is refused with
the model's error, and each stored metric batch leaves a summary event in the outbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest

from fleetlab_common.db.pool import create_pool
from fleetlab_common.events import LogLine, LogLinesAppended, MetricPoint, MetricsReported
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_logstream.app import migrate
from fleetlab_logstream.schemas import LinesQuery, MetricsQuery
from fleetlab_logstream.service import Logstream
from fleetlab_logstream.settings import LogstreamSettings

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
async def ls(fresh_dsn: str) -> AsyncIterator[Logstream]:
    settings = LogstreamSettings(
        postgres=PostgresSettings(dsn=fresh_dsn),
        nats=NatsSettings(url="nats://127.0.0.1:1"),  # never dialled
    )
    await migrate(settings)
    pool = await create_pool(fresh_dsn, "logstream")
    try:
        yield Logstream(settings, pool)
    finally:
        await pool.close()


def as_json(model: pydantic.BaseModel) -> dict[str, Any]:
    """The body as a consumer receives it: the event's JSON, decoded."""
    body: dict[str, Any] = json.loads(model.model_dump_json())
    return body


async def test_lines_from_json_are_stored_once_and_as_sent(ls: Logstream) -> None:
    eid = uuid.uuid4()
    batch = LogLinesAppended(
        experiment_id=eid,
        agent_id="a",
        lines=[
            LogLine(seq=1, stream="stdout", ts=T0, line="first \x1b[32mgreen\x1b[0m"),
            LogLine(seq=2, stream="stderr", ts=T0 + timedelta(seconds=1), line="nul\x00byte"),
        ],
    )
    await ls.on_lines_json(as_json(batch))
    await ls.on_lines_json(as_json(batch))  # redelivered

    page = await ls.query(LinesQuery(experiment_id=eid))
    assert [(ln.seq, ln.stream, ln.ts, ln.line) for ln in page.lines] == [
        (1, "stdout", T0, "first \x1b[32mgreen\x1b[0m"),
        (2, "stderr", T0 + timedelta(seconds=1), "nul\ufffdbyte"),
    ]
    assert page.stored == 2


@pytest.mark.parametrize(
    "change",
    [
        {"lines": [{"seq": 1, "stream": "stdin", "ts": "2025-01-01T00:00:00Z", "line": "x"}]},
        {"lines": [{"seq": 1, "stream": "stdout", "line": "x"}]},
        {"experiment_id": "not-a-uuid"},
    ],
)
async def test_a_malformed_line_batch_is_refused(ls: Logstream, change: dict[str, Any]) -> None:
    body = {"experiment_id": str(uuid.uuid4()), "agent_id": "a", "lines": [], **change}
    with pytest.raises(pydantic.ValidationError):
        await ls.on_lines_json(body)


async def test_metrics_from_json_match_the_model_path_and_are_stored_once(
    ls: Logstream,
) -> None:
    fast, slow = uuid.uuid4(), uuid.uuid4()
    points = [
        MetricPoint(name="loss", value=v, step=i, ts=T0 + timedelta(seconds=i))
        for i, v in enumerate([0.9, 0.2, 0.5])
    ]
    points.append(MetricPoint(name="gpu", value=3, ts=T0, metadata={"unit": "GB"}, rank=1))

    def event(eid: uuid.UUID) -> MetricsReported:
        return MetricsReported(experiment_id=eid, agent_id="a", points=points, scores={"acc": 0.93})

    fast_event = event(fast)
    await ls.on_metrics_json(as_json(fast_event))
    await ls.on_metrics_json(as_json(fast_event))  # redelivered: the inbox drops it
    await ls.on_metrics(event(slow))

    got = await ls.metrics(MetricsQuery(experiment_id=fast, points=0))
    want = await ls.metrics(MetricsQuery(experiment_id=slow, points=0))
    assert [(p.name, p.step, p.value, p.ts, p.metadata) for p in got.raw] == [
        (p.name, p.step, p.value, p.ts, p.metadata) for p in want.raw
    ]
    assert len(got.raw) == 4
    assert got.summary == want.summary
    assert got.scores == want.scores == {"acc": 0.93}

    # Each stored batch left one summary event for the API in the outbox.
    async with ls.pool.acquire() as conn:
        rows = await conn.fetch("SELECT subject, payload FROM outbox ORDER BY seq")
    subjects = [r["subject"] for r in rows]
    assert subjects == [
        f"logstream.metrics.summarized.{fast}",
        f"logstream.metrics.summarized.{slow}",
    ]
    summary = json.loads(rows[0]["payload"])
    loss = next(m for m in summary["metrics"] if m["name"] == "loss")
    assert (loss["last"], loss["min"], loss["max"], loss["count"]) == (0.5, 0.2, 0.9, 3)
    assert summary["scores"] == {"acc": 0.93}


async def test_ingested_json_points_are_stored(ls: Logstream) -> None:
    eid = uuid.uuid4()
    body = {
        "experiment_id": str(eid),
        "attempt": 1,
        "scores": {},
        "points": [
            {"name": "m", "value": i * 0.5, "step": i, "ts": "2025-01-01T00:00:00+00:00"}
            for i in range(1000)
        ],
    }
    assert await ls.ingest_json(body) == 1000
    got = await ls.metrics(MetricsQuery(experiment_id=eid, points=0, limit=5000))
    assert [p.value for p in got.raw] == [i * 0.5 for i in range(1000)]
    with pytest.raises(pydantic.ValidationError):
        await ls.ingest_json({**body, "points": [{"name": "m", "value": "high", "ts": "x"}]})
