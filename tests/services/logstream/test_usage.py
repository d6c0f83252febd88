"""Resource-use samples in logstream: stored once per batch, read whole (paged) or downsampled
into time buckets, the latest machine sample per agent, pruned by age; and through NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from faststream.nats import NatsBroker

from fleetlab_common.broker import publish_event
from fleetlab_common.db.pool import create_pool
from fleetlab_common.embedded import start_nats, stop_process
from fleetlab_common.events import (
    ExperimentUsage,
    GpuUsage,
    MachineUsage,
    Rpc,
    UsageSampled,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_logstream import usage
from fleetlab_logstream.app import build_service, migrate
from fleetlab_logstream.settings import LogstreamSettings

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def sampled(
    agent_id: str,
    second: int,
    experiments: dict[uuid.UUID, float] | None = None,
    *,
    gpus: int = 0,
) -> UsageSampled:
    """One batch at ``T0 + second``: machine CPU = second % 100, each experiment's CPU as
    given and RSS 100 + second; GPU i at utilisation 10 * i."""
    ts = T0 + timedelta(seconds=second)
    return UsageSampled(
        agent_id=agent_id,
        machine=MachineUsage(
            ts=ts,
            cpu_percent=float(second % 100),
            memory_used_mb=1000.0 + second,
            memory_total_mb=16000.0,
            gpus=[
                GpuUsage(
                    index=i,
                    utilization=10.0 * i,
                    memory_used_mb=100.0 + second,
                    memory_total_mb=8000.0,
                )
                for i in range(gpus)
            ],
        ),
        experiments=[
            ExperimentUsage(
                experiment_id=eid, ts=ts, cpu_percent=cpu, rss_mb=100.0 + second, processes=2
            )
            for eid, cpu in (experiments or {}).items()
        ],
    )


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    settings = LogstreamSettings(
        postgres=PostgresSettings(dsn=fresh_dsn), nats=NatsSettings(url="nats://127.0.0.1:1")
    )
    await migrate(settings)
    p = await create_pool(fresh_dsn, "logstream")
    try:
        yield p
    finally:
        await p.close()


async def test_every_sample_of_an_experiment_in_order_and_a_redelivery_stored_once(
    pool: asyncpg.Pool,
) -> None:
    eid, other = uuid7(), uuid7()
    batches = [sampled("a1", s, {eid: 50.0 + s, other: 1.0}) for s in range(5)]
    for b in batches:
        assert await usage.store(pool, b)
    assert not await usage.store(pool, batches[2])  # JetStream redelivered it
    page = await usage.query(pool, usage.UsageQuery(experiment_id=eid))
    assert page.total == 5 and not page.downsampled
    assert [s["cpu_percent"] for s in page.samples] == [50.0, 51.0, 52.0, 53.0, 54.0]
    first = page.samples[0]
    assert first == {
        "ts": T0.isoformat(),
        "attempt": 1,
        "agent_id": "a1",
        "rank": None,
        "cpu_percent": 50.0,
        "rss_mb": 100.0,
        "processes": 2,
        "gpu_percent": None,
        "gpu_memory_mb": None,
    }
    since = await usage.query(
        pool, usage.UsageQuery(experiment_id=eid, since=T0 + timedelta(seconds=3))
    )
    assert [s["cpu_percent"] for s in since.samples] == [53.0, 54.0] and since.total == 2


async def test_downsampled_buckets_hold_the_mean_cpu_and_the_peak_memory(
    pool: asyncpg.Pool,
) -> None:
    eid = uuid7()
    for s in range(1000):
        await usage.store(pool, sampled("a1", s, {eid: float(s % 10)}))
    page = await usage.query(pool, usage.UsageQuery(experiment_id=eid, points=10))
    assert page.downsampled and page.total == 1000
    assert len(page.samples) == 10
    # Each bucket spans ~100 samples cycling 0..9: mean CPU about 4.5; memory its peak.
    for sample in page.samples:
        assert 4.0 <= sample["cpu_percent"] <= 5.0
    assert page.samples[-1]["rss_mb"] == 100.0 + 999
    assert page.samples[-1]["ts"] == (T0 + timedelta(seconds=999)).isoformat()
    times = [s["ts"] for s in page.samples]
    assert times == sorted(times)


def ranks_sampled(agent_id: str, second: int, eid: uuid.UUID, ranks: list[int]) -> UsageSampled:
    """One batch from ``agent_id`` at ``T0 + second`` holding one sample per rank: rank r uses
    100 * (r + 1) % CPU, holds 1000 * (r + 1) + second MB and runs r + 1 processes."""
    batch = sampled(agent_id, second)
    ts = batch.machine.ts
    return batch.model_copy(
        update={
            "experiments": [
                ExperimentUsage(
                    experiment_id=eid,
                    rank=r,
                    ts=ts,
                    cpu_percent=100.0 * (r + 1),
                    rss_mb=1000.0 * (r + 1) + second,
                    processes=r + 1,
                )
                for r in ranks
            ]
        }
    )


async def test_every_rank_of_a_multi_worker_experiment_is_a_series_of_its_own(
    pool: asyncpg.Pool,
) -> None:
    # Ranks 0 and 1 on one agent, rank 2 on another: 3 samples a second for 100 seconds.
    eid = uuid7()
    for s in range(100):
        await usage.store(pool, ranks_sampled("box-a", s, eid, [0, 1]))
        await usage.store(pool, ranks_sampled("box-b", s, eid, [2]))

    page = await usage.query(pool, usage.UsageQuery(experiment_id=eid, points=0))
    assert page.total == 300 and len(page.samples) == 300
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for sample in page.samples:
        by_rank.setdefault(sample["rank"], []).append(sample)
    assert sorted(by_rank) == [0, 1, 2]
    for rank, samples in by_rank.items():
        # None written over another: each rank has every second, with its own tree's numbers.
        assert len(samples) == 100
        assert {s["agent_id"] for s in samples} == {"box-b" if rank == 2 else "box-a"}
        assert {(s["cpu_percent"], s["processes"]) for s in samples} == {
            (100.0 * (rank + 1), rank + 1)
        }
        assert [s["rss_mb"] for s in samples] == [1000.0 * (rank + 1) + t for t in range(100)]
    # At one time, the ranks together: the experiment's whole use.
    at_7 = [s for s in page.samples if s["ts"] == (T0 + timedelta(seconds=7)).isoformat()]
    assert sum(s["cpu_percent"] for s in at_7) == 600.0

    # Downsampled, each bucket is one rank's: its mean CPU and its peak memory, never a mix
    # of two ranks or two machines; 30 points in all, 10 per rank.
    small = await usage.query(pool, usage.UsageQuery(experiment_id=eid, points=30))
    assert small.downsampled and small.total == 300 and len(small.samples) == 30
    for rank in (0, 1, 2):
        buckets = [s for s in small.samples if s["rank"] == rank]
        assert len(buckets) == 10
        assert {s["agent_id"] for s in buckets} == {"box-b" if rank == 2 else "box-a"}
        assert {s["cpu_percent"] for s in buckets} == {100.0 * (rank + 1)}
        assert buckets[-1]["rss_mb"] == 1000.0 * (rank + 1) + 99
    times = [s["ts"] for s in small.samples]
    assert times == sorted(times)


async def test_two_agents_running_one_single_process_experiment_are_not_mixed(
    pool: asyncpg.Pool,
) -> None:
    # A retry on another agent, or any two agents sampling one experiment: two series.
    eid = uuid7()
    for s in range(50):
        await usage.store(pool, sampled("first", s, {eid: 10.0}))
        await usage.store(pool, sampled("second", s, {eid: 90.0}))
    small = await usage.query(pool, usage.UsageQuery(experiment_id=eid, points=10))
    assert small.downsampled and len(small.samples) == 10
    assert {(s["agent_id"], s["rank"], s["cpu_percent"]) for s in small.samples} == {
        ("first", None, 10.0),
        ("second", None, 90.0),
    }


async def test_every_sample_comes_page_by_page_in_time_order(pool: asyncpg.Pool) -> None:
    eid = uuid7()
    for s in reversed(range(25)):  # batches may be stored out of order
        await usage.store(pool, sampled("a1", s, {eid: float(s)}))
    seen: list[float] = []
    offset = 0
    while True:
        page = await usage.query(
            pool, usage.UsageQuery(experiment_id=eid, points=0, limit=10, offset=offset)
        )
        seen += [s["cpu_percent"] for s in page.samples]
        if page.next_offset is None:
            break
        offset = page.next_offset
    assert seen == [float(s) for s in range(25)]


async def test_an_agents_samples_with_their_gpus_raw_downsampled_and_latest(
    pool: asyncpg.Pool,
) -> None:
    for s in range(40):
        await usage.store(pool, sampled("gpu-box", s, gpus=2))
    await usage.store(pool, sampled("cpu-box", 7))
    raw = await usage.query(pool, usage.UsageQuery(agent_id="gpu-box", points=100))
    assert raw.total == 40 and len(raw.samples) == 40
    assert raw.samples[3]["gpus"] == [
        {"index": 0, "utilization": 0.0, "memory_used_mb": 103.0, "memory_total_mb": 8000.0},
        {"index": 1, "utilization": 10.0, "memory_used_mb": 103.0, "memory_total_mb": 8000.0},
    ]
    small = await usage.query(pool, usage.UsageQuery(agent_id="gpu-box", points=4))
    assert small.downsampled and len(small.samples) == 4
    for sample in small.samples:
        assert [g["utilization"] for g in sample["gpus"]] == [0.0, 10.0]
    assert small.samples[-1]["memory_used_mb"] == 1039.0  # the peak of the last bucket

    latest = await usage.latest(pool, ["gpu-box", "cpu-box", "never-seen"])
    assert set(latest) == {"gpu-box", "cpu-box"}
    assert latest["gpu-box"]["ts"] == (T0 + timedelta(seconds=39)).isoformat()
    assert len(latest["gpu-box"]["gpus"]) == 2
    assert latest["cpu-box"]["cpu_percent"] == 7.0 and latest["cpu-box"]["gpus"] == []


async def test_samples_older_than_the_retention_age_are_deleted(pool: asyncpg.Pool) -> None:
    eid = uuid7()
    for s in range(10):
        await usage.store(pool, sampled("a1", s, {eid: 1.0}, gpus=1))
    gone = await usage.prune(pool, T0 + timedelta(seconds=6))
    assert gone == 6 * 3  # machine, GPU and experiment rows
    page = await usage.query(pool, usage.UsageQuery(experiment_id=eid))
    assert page.total == 4
    agent = await usage.query(pool, usage.UsageQuery(agent_id="a1"))
    assert agent.total == 4
    assert agent.samples[0]["ts"] == (T0 + timedelta(seconds=6)).isoformat()


def test_a_query_names_one_experiment_or_one_agent() -> None:
    with pytest.raises(ValueError, match="experiment_id or agent_id"):
        usage.UsageQuery()
    with pytest.raises(ValueError, match="experiment_id or agent_id"):
        usage.UsageQuery(experiment_id=uuid7(), agent_id="a1")


# --- through NATS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Its own server: the durable consumers are shared by every logstream on a server.
    proc, url = start_nats(tmp_path_factory.mktemp("usage-nats"))
    try:
        yield url
    finally:
        stop_process(proc)


async def test_batches_from_jetstream_are_stored_and_answered_over_rpc(
    fresh_dsn: str, module_nats_url: str
) -> None:
    settings = LogstreamSettings(
        postgres=PostgresSettings(dsn=fresh_dsn), nats=NatsSettings(url=module_nats_url)
    )
    service, _ = build_service(settings)
    await service.start_db()
    await service.broker.start()
    client = NatsBroker(module_nats_url)
    try:
        await service.started()
        await client.connect()
        eid = uuid7()
        for s in range(3):
            await publish_event(client, sampled("nats-agent", s, {eid: 25.0}))

        async def ask(subject: str, body: dict[str, Any]) -> dict[str, Any]:
            reply = await client.request(body, subject, timeout=20.0)
            answer: dict[str, Any] = await reply.decode()  # type: ignore[assignment]
            return answer

        async def stored() -> dict[str, Any] | None:
            page = await ask(Rpc.USAGE, {"experiment_id": str(eid)})
            return page if page["total"] == 3 else None

        async with asyncio.timeout(60):  # the batches may still be on their way
            while (page := await stored()) is None:
                await asyncio.sleep(0.05)
        assert [s["cpu_percent"] for s in page["samples"]] == [25.0, 25.0, 25.0]
        latest = await ask(Rpc.USAGE_LATEST, {"agent_ids": ["nats-agent"]})
        assert latest["agents"]["nats-agent"]["ts"] == (T0 + timedelta(seconds=2)).isoformat()
    finally:
        await client.stop()
        await service.stopping()
        await service.broker.stop()
        await service.closed()
