"""Logstream's logic: store line batches, answer queries (waiting for late batches), archive
each finished run's log to the artifact store, apply retention, keep agents' own logs and
every run's metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from fleetlab_common.artifacts import ArtifactStore
from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import first_delivery
from fleetlab_common.db.outbox import OutboxRelay, enqueue
from fleetlab_common.events import (
    AgentLogAppended,
    ExperimentAssigned,
    ExperimentDeleted,
    ExperimentFinished,
    LogLinesAppended,
    MetricsReported,
    MetricsSummarized,
    MetricSummaryEntry,
    utcnow,
)
from fleetlab_common.log import get_logger
from fleetlab_logstream import repository as repo
from fleetlab_logstream.lttb import lttb
from fleetlab_logstream.schemas import (
    AgentLogEntry,
    AgentLogPage,
    AgentLogQuery,
    LinesPage,
    LinesQuery,
    MetricsIngest,
    MetricsPage,
    MetricsQuery,
    MetricSummary,
    RawPoint,
    Series,
    SeriesPoint,
)
from fleetlab_logstream.settings import LogstreamSettings

log = get_logger(__name__)

CONSUMER = "logstream"
# Bytes of a page's JSON around its lines: {"attempt":…,"lines":[…],"stored":…,"next_seq":…}.
_PAGE_OVERHEAD = 160
# Lines read from the database at a time when writing a run's archive.
_ARCHIVE_PAGE = 10_000


def archive_key(experiment_id: uuid.UUID, attempt: int) -> str:
    """Where a run's full log lives in the artifact store: one JSON object per line."""
    return f"logs/{experiment_id}/{attempt}.jsonl"


def _batch_of_json(points: list[Any]) -> repo.PointBatch | None:
    """A batch straight from decoded JSON points, or None when a point is not plainly well
    formed (then the model reads the batch, and its error says what is wrong). The hot path
    of ingestion: a model per point cost logstream most of its time."""
    fromiso = datetime.fromisoformat
    batch: repo.PointBatch = {}
    # The points of one line of a metrics file (or of one REST batch) share their time: the
    # text is read once.
    last_text: str | None = None
    last_ts = datetime.min
    for p in points:
        name, value, step = p["name"], p["value"], p.get("step")
        metadata, rank, cumulative = p.get("metadata"), p.get("rank"), p.get("cumulative", False)
        if (
            type(name) is not str
            or type(value) not in (float, int)
            or not math.isfinite(value)
            or (step is not None and type(step) is not int)
            or (metadata is not None and type(metadata) is not dict)
            or (rank is not None and type(rank) is not int)
            or type(cumulative) is not bool
            or type(p["ts"]) is not str
        ):
            return None
        if p["ts"] != last_text:
            last_text = p["ts"]
            last_ts = fromiso(p["ts"])
            if last_ts.tzinfo is None:
                last_ts = last_ts.replace(tzinfo=UTC)
        if rank is not None:  # as repository._metadata keeps it
            metadata = {**(metadata or {}), "rank": rank}
        meta = None if metadata is None else orjson.dumps(metadata).decode()
        repo.add_point(batch, name, step, float(value), last_ts, cumulative, meta)
    return batch


_STREAMS = frozenset(("stdout", "stderr"))
_LINES_JSON = orjson.dumps


def _line_batch(body: dict[str, Any]) -> tuple[uuid.UUID, int, list[dict[str, Any]], int]:
    """(experiment, attempt, lines, bytes of text) of a decoded batch, each line checked to
    be plainly a ``LogLine`` (TypeError when one is not). PostgreSQL text cannot hold NUL (an
    older agent may send one): it is replaced, not fatal."""
    experiment_id = uuid.UUID(body["experiment_id"])
    attempt = int(body.get("attempt", 1))
    lines: list[dict[str, Any]] = body["lines"]
    size = 0
    for ln in lines:
        text, rank = ln["line"], ln.get("rank")
        if (
            type(ln["seq"]) is not int
            or ln["stream"] not in _STREAMS
            or type(ln["ts"]) is not str
            or type(text) is not str
            or (rank is not None and type(rank) is not int)
        ):
            raise TypeError("not a batch of lines")
        if "\x00" in text:
            ln["line"] = text = text.replace("\x00", "\ufffd")
        size += len(text.encode())
    return experiment_id, attempt, lines, size


def _scores_of_json(scores: Any) -> dict[str, float] | None:
    if not isinstance(scores, dict):
        return None
    if not all(type(v) in (float, int) and math.isfinite(v) for v in scores.values()):
        return None
    return {str(k): float(v) for k, v in scores.items()}


@dataclass
class Logstream:
    settings: LogstreamSettings
    pool: asyncpg.Pool
    store: ArtifactStore | None = None
    # Publishes the summaries each stored metric batch leaves (None in tests that need none).
    relay: OutboxRelay | None = None
    _stored: asyncio.Condition = field(default_factory=asyncio.Condition)
    _archive_wake: asyncio.Event = field(default_factory=asyncio.Event)

    # -- output lines ----------------------------------------------------------------------

    async def on_lines(self, batch: LogLinesAppended) -> None:
        await self.on_lines_json(batch.model_dump(mode="json"))

    async def on_lines_json(self, body: dict[str, Any]) -> None:
        """A batch as decoded JSON: the hot path, without a model per line (validating half
        a million line objects a second was logstream's largest cost). The lines are checked
        and stored as one chunk, as the agent sent them. A body not plainly of the expected
        shape goes through the model: its error names what is wrong, or it is stored as the
        model reads it."""
        try:
            experiment_id, attempt, lines, size = _line_batch(body)
        except (KeyError, TypeError, ValueError, AttributeError):
            batch = LogLinesAppended.model_validate(body)
            experiment_id, attempt, lines, size = _line_batch(batch.model_dump(mode="json"))
        if not lines:
            return
        async with self.pool.acquire() as conn:
            await repo.insert_chunk(conn, experiment_id, attempt, lines, size)
        await self._lines_stored()

    async def _lines_stored(self) -> None:
        async with self._stored:
            self._stored.notify_all()
        # A finished run waiting for its last lines may now be complete.
        self._archive_wake.set()

    async def _wait_for(self, query: LinesQuery, attempt: int | None) -> int | None:
        """Wait until ``min_count`` lines of the attempt are stored, or ``wait_s`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + query.wait_s
        while True:
            async with self.pool.acquire() as conn:
                if attempt is None:
                    attempt = await repo.latest_attempt(conn, query.experiment_id)
                stored = (
                    0
                    if attempt is None
                    else await repo.count_lines(conn, query.experiment_id, attempt)
                )
            if query.min_count is None or stored >= query.min_count:
                return attempt
            remaining = deadline - loop.time()
            if remaining <= 0:
                return attempt
            # Another replica may store the batch: its wake-up never reaches this process.
            async with self._stored:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stored.wait(), min(remaining, 0.25))

    async def query(self, query: LinesQuery) -> LinesPage:
        return LinesPage.model_validate(await self.query_json(query))

    async def query_json(self, query: LinesQuery) -> dict[str, Any]:
        """A ``LinesPage`` as JSON-ready data, the lines as stored (no model per line)."""
        attempt = await self._wait_for(query, query.attempt)
        if attempt is None:
            return {"attempt": None, "lines": [], "stored": 0, "next_seq": None, "last_seq": 0}
        async with self.pool.acquire() as conn:
            run = await repo.get_run(conn, query.experiment_id, attempt)
            stored = int(run["stored"]) if run else 0
            last_seq = int(run["last_seq"]) if run else 0
            rows = await repo.fetch_lines(
                conn,
                query.experiment_id,
                attempt,
                query.from_seq,
                query.to_seq,
                query.stream,
                query.limit + 1,
            )
        lines = rows[: query.limit]
        # Measured as it is sent (JSON in UTF-8), not in characters: a progress bar's "█"
        # takes three bytes and a terminal escape six ("\u001b"), so a page counted in
        # characters outgrew the NATS payload limit and the viewer's request timed out.
        if _PAGE_OVERHEAD + len(_LINES_JSON(lines)) > self.settings.max_reply_bytes:
            size = _PAGE_OVERHEAD
            for i, line in enumerate(lines):
                size += len(_LINES_JSON(line)) + 1
                if i and size > self.settings.max_reply_bytes:
                    lines = lines[:i]
                    break
        more = len(lines) < len(rows)
        return {
            "attempt": attempt,
            "lines": lines,
            "stored": stored,
            "next_seq": lines[-1]["seq"] + 1 if more and lines else None,
            "last_seq": last_seq,
        }

    # -- run ends: archive -----------------------------------------------------------------

    async def on_finished(self, event: ExperimentFinished) -> None:
        async with self.pool.acquire() as conn:
            await repo.record_finished(
                conn,
                event.experiment_id,
                event.attempt,
                event.status,
                event.log_lines,
                event.occurred_at,
            )
        if event.log_lines:
            self._archive_wake.set()

    async def on_assigned(self, event: ExperimentAssigned) -> None:
        async with self.pool.acquire() as conn:
            await repo.record_project(conn, event.experiment_id, event.project)

    async def on_deleted(self, event: ExperimentDeleted) -> None:
        """The experiment's record was deleted: its lines, metrics and archives go too."""
        async with self.pool.acquire() as conn:
            keys = await repo.delete_experiment(conn, event.experiment_id)
        if self.store is not None:
            for key in keys:
                await self.store.delete(key)
        log.info("experiment.deleted", experiment_id=str(event.experiment_id), archives=len(keys))

    async def archive_pending(self) -> int:
        """Archive every finished run whose log is complete (or waited ``archive_wait_s``)."""
        if self.store is None:
            return 0
        gave_up = utcnow() - timedelta(seconds=self.settings.archive_wait_s)
        done = 0
        while True:
            async with self.pool.acquire() as conn:
                runs = await repo.runs_to_archive(conn, gave_up, 20)
            for run in runs:
                complete = run["stored"] >= (run["log_lines"] or 0)
                await self.archive(run["experiment_id"], run["attempt"], complete=complete)
                done += 1
            if len(runs) < 20:
                return done

    async def archive(self, experiment_id: uuid.UUID, attempt: int, *, complete: bool) -> str:
        """Write the run's whole log to the artifact store; returns its key."""
        assert self.store is not None
        key = archive_key(experiment_id, attempt)
        with tempfile.TemporaryDirectory(prefix="fleetlab-archive-") as tmp:
            path = Path(tmp) / "log.jsonl"
            count = 0
            with path.open("wb") as out:
                next_seq = 1
                while True:
                    async with self.pool.acquire() as conn:
                        rows = await repo.fetch_lines(
                            conn, experiment_id, attempt, next_seq, None, None, _ARCHIVE_PAGE
                        )
                    out.writelines(_LINES_JSON(r) + b"\n" for r in rows)
                    count += len(rows)
                    if len(rows) < _ARCHIVE_PAGE:
                        break
                    next_seq = rows[-1]["seq"] + 1
            await self.store.put_file(key, path, "application/x-ndjson")
        async with self.pool.acquire() as conn:
            await repo.mark_archived(conn, experiment_id, attempt, key, complete)
        if complete:
            log.info("log.archived", experiment_id=str(experiment_id), attempt=attempt, lines=count)
        else:
            log.warning(
                "log.archived_incomplete",
                experiment_id=str(experiment_id),
                attempt=attempt,
                lines=count,
            )
        return key

    async def archive_loop(self) -> None:
        """Archive runs as they end (woken by their end), and sweep now and then."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._archive_wake.wait(), 5.0)
            self._archive_wake.clear()
            try:
                await self.archive_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # storage away: the next sweep tries again
                log.warning("log.archive_failed", error=repr(exc))

    # -- retention -------------------------------------------------------------------------

    async def apply_retention(self) -> int:
        """Drop the logs of finished runs past their project's age or size bound."""
        now = utcnow()
        async with self.pool.acquire() as conn:
            runs = await repo.finished_runs_by_age(conn)
        expired = 0
        for run in runs:
            policy = self.settings.policy(run["project"])
            too_old = policy.max_age_days is not None and run["finished_at"] < now - timedelta(
                days=policy.max_age_days
            )
            too_big = policy.max_bytes is not None and run["kept_bytes"] > policy.max_bytes
            if not (too_old or too_big):
                continue
            if run["archive_key"] and self.store is not None:
                await self.store.delete(run["archive_key"])
            async with self.pool.acquire() as conn, conn.transaction():
                await repo.expire_run(conn, run["experiment_id"], run["attempt"])
            expired += 1
        async with self.pool.acquire() as conn:
            await repo.prune_agent_lines(conn, self.settings.agent_log_lines)
        if expired:
            log.info("log.retention", expired_runs=expired)
        return expired

    async def retention_loop(self) -> None:
        while True:
            await self.apply_retention()
            await asyncio.sleep(self.settings.retention_interval_s)

    # -- agents' own logs ------------------------------------------------------------------

    async def on_agent_log(self, batch: AgentLogAppended) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if await first_delivery(conn, CONSUMER, batch):
                await repo.insert_agent_lines(conn, batch.agent_id, batch.lines)

    async def agent_log(self, query: AgentLogQuery) -> AgentLogPage:
        async with self.pool.acquire() as conn:
            rows = await repo.fetch_agent_lines(conn, query.agent_id, query.limit, query.before_id)
        lines = [
            AgentLogEntry(id=r["id"], ts=r["ts"], level=r["level"], line=r["line"]) for r in rows
        ]
        more = len(lines) == query.limit
        return AgentLogPage(lines=lines, before_id=lines[0].id if more and lines else None)

    # -- metrics ---------------------------------------------------------------------------

    async def _store_metrics(
        self,
        conn: Conn,
        experiment_id: uuid.UUID,
        attempt: int,
        batch: repo.PointBatch,
        scores: dict[str, float],
    ) -> None:
        summaries: list[MetricSummaryEntry] = []
        if batch:
            await repo.copy_points(conn, experiment_id, attempt, batch)
            rows = await repo.upsert_summary(conn, experiment_id, repo.summarise(batch))
            summaries = [MetricSummaryEntry(**dict(r)) for r in rows]
        if scores:
            await repo.upsert_scores(conn, experiment_id, scores)
        if summaries or scores:
            # The API sorts and filters experiments by these; one small event per batch,
            # whatever its size, keeps its work independent of the point rate.
            await enqueue(
                conn,
                MetricsSummarized(
                    experiment_id=experiment_id,
                    attempt=attempt,
                    metrics=summaries,
                    scores=scores,
                ),
            )

    async def on_metrics(self, batch: MetricsReported) -> None:
        """Store a batch once (the inbox drops a redelivery; COPY cannot skip duplicates)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await first_delivery(conn, CONSUMER, batch):
                points = repo.batch_of_points(batch.points)
                await self._store_metrics(
                    conn, batch.experiment_id, batch.attempt, points, batch.scores
                )
        self._kick()
        if batch.skipped:
            log.warning(
                "metrics.malformed_lines",
                experiment_id=str(batch.experiment_id),
                skipped=batch.skipped,
            )

    async def on_metrics_json(self, body: dict[str, Any]) -> None:
        """:meth:`on_metrics` from decoded JSON, without a model per point."""
        try:
            event_id = uuid.UUID(body["id"])
            experiment_id = uuid.UUID(body["experiment_id"])
            attempt = int(body.get("attempt", 1))
            points = _batch_of_json(body.get("points", []))
            scores = _scores_of_json(body.get("scores", {}))
            skipped = body.get("skipped", 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            points = scores = None
        if points is None or scores is None or type(skipped) is not int:
            await self.on_metrics(MetricsReported.model_validate(body))
            return
        async with self.pool.acquire() as conn, conn.transaction():
            # The inbox needs only the event's id: an event without its points stands for it.
            bare = MetricsReported(id=event_id, experiment_id=experiment_id, agent_id="")
            if await first_delivery(conn, CONSUMER, bare):
                await self._store_metrics(conn, experiment_id, attempt, points, scores)
        self._kick()
        if skipped:
            log.warning(
                "metrics.malformed_lines", experiment_id=str(experiment_id), skipped=skipped
            )

    async def ingest(self, request: MetricsIngest) -> int:
        points = repo.batch_of_points(request.points)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._store_metrics(
                conn, request.experiment_id, request.attempt, points, request.scores
            )
        self._kick()
        return len(request.points)

    async def ingest_json(self, body: dict[str, Any]) -> int:
        """:meth:`ingest` from decoded JSON, without a model per point."""
        try:
            experiment_id = uuid.UUID(body["experiment_id"])
            attempt = int(body.get("attempt", 1))
            points = _batch_of_json(body["points"])
            scores = _scores_of_json(body.get("scores", {}))
        except (KeyError, TypeError, ValueError, AttributeError):
            points = scores = None
        if points is None or scores is None:
            return await self.ingest(MetricsIngest.model_validate(body))
        async with self.pool.acquire() as conn, conn.transaction():
            await self._store_metrics(conn, experiment_id, attempt, points, scores)
        self._kick()
        return sum(len(s.vals) for s in points.values())

    def _kick(self) -> None:
        if self.relay is not None:
            self.relay.kick()

    async def metrics(self, query: MetricsQuery) -> MetricsPage:
        async with self.pool.acquire() as conn:
            summary = [
                MetricSummary(**dict(r))
                for r in await repo.fetch_summary(conn, query.experiment_id)
            ]
            scores = await repo.fetch_scores(conn, query.experiment_id)
            wanted = [s for s in summary if query.names is None or s.name in query.names]
            if query.points == 0:
                rows = await repo.fetch_points(
                    conn, query.experiment_id, query.names, query.after_id, query.limit
                )
                raw = [
                    RawPoint(
                        **{
                            **dict(r),
                            "metadata": json.loads(r["metadata"]) if r["metadata"] else None,
                        }
                    )
                    for r in rows
                ]
                return MetricsPage(
                    raw=raw,
                    next_after_id=raw[-1].id if len(raw) == query.limit else None,
                    summary=wanted,
                    scores=scores,
                )
            series: list[Series] = []
            for s in wanted:
                steps, vals, times = await repo.fetch_series(conn, query.experiment_id, s.name)
                total = len(vals)
                keep: Sequence[int] = range(total)
                if total > query.points:
                    xs = [
                        float(step) if step is not None else t.timestamp()
                        for step, t in zip(steps, times, strict=True)
                    ]
                    keep = lttb(xs, vals, query.points)
                series.append(
                    Series(
                        name=s.name,
                        points=[
                            SeriesPoint(step=steps[i], value=vals[i], ts=times[i]) for i in keep
                        ],
                        total=total,
                        downsampled=total > query.points,
                    )
                )
        return MetricsPage(series=series, summary=wanted, scores=scores)
