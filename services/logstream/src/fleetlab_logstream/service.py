"""Logstream's logic: store line batches, answer queries (waiting for late batches)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg

from fleetlab_common.events import LogLine, LogLinesAppended
from fleetlab_logstream import repository as repo
from fleetlab_logstream.schemas import LinesPage, LinesQuery
from fleetlab_logstream.settings import LogstreamSettings

# Bytes of a page's JSON around its lines: {"attempt":…,"lines":[…],"stored":…,"next_seq":…}.
_PAGE_OVERHEAD = 128


@dataclass
class Logstream:
    settings: LogstreamSettings
    pool: asyncpg.Pool
    _stored: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_lines(self, batch: LogLinesAppended) -> None:
        async with self.pool.acquire() as conn:
            await repo.insert_lines(conn, batch)
        async with self._stored:
            self._stored.notify_all()

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
            async with self._stored:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stored.wait(), min(remaining, 0.25))

    async def query(self, query: LinesQuery) -> LinesPage:
        attempt = await self._wait_for(query, query.attempt)
        if attempt is None:
            return LinesPage(attempt=None, lines=[], stored=0)
        async with self.pool.acquire() as conn:
            stored = await repo.count_lines(conn, query.experiment_id, attempt)
            rows = await repo.fetch_lines(
                conn,
                query.experiment_id,
                attempt,
                query.from_seq,
                query.to_seq,
                query.stream,
                query.limit + 1,
            )
        lines: list[LogLine] = []
        size = _PAGE_OVERHEAD
        for row in rows[: query.limit]:
            line = LogLine(seq=row["seq"], stream=row["stream"], ts=row["ts"], line=row["line"])
            # Measured as it is sent (JSON in UTF-8), not in characters: a progress bar's "█"
            # takes three bytes and a terminal escape six ("\u001b"), so a page counted in
            # characters outgrew the NATS payload limit and the viewer's request timed out.
            size += len(line.model_dump_json().encode()) + 1
            if lines and size > self.settings.max_reply_bytes:
                break
            lines.append(line)
        more = len(lines) < len(rows)
        return LinesPage(
            attempt=attempt,
            lines=lines,
            stored=stored,
            next_seq=lines[-1].seq + 1 if more and lines else None,
        )
