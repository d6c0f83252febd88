"""The agent's spool: every fact it reports, kept on disk in order until NATS has it.

Log lines, metrics, and the start and end of runs are written here first (appended to
segment files under ``<work root>/../spool``) and a single sender publishes them to JetStream
in the order they were written, each with its event id as ``Nats-Msg-Id``. When NATS is away,
runs go on and the spool grows; when it is back, everything is sent, in order. When the agent
restarts, what was not yet sent is sent then. The spool is bounded (``spool_max_mb``, 1 GiB
by default): once full, writers wait — a run's output pipe then fills and the program blocks
on its next print, rather than anything being dropped.

A record sent but not yet marked sent when the agent died is sent again on restart: JetStream
drops it as a duplicate within its window, and every consumer is idempotent beyond it.

A record is one line: its subject, stream and headers as a JSON object, a tab, then the
event's JSON payload as it is published (JSON text holds no raw tab or newline). Records of
an earlier agent, one JSON object with the payload as a string, are still read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker

from fleetlab_common.events import EncodedEvent, Event
from fleetlab_common.log import get_logger
from fleetlab_common.service import cancel_until_done

log = get_logger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024
# Seconds between saves of the cursor while records are being sent, and the quiet time after
# the last send before it is saved.
CURSOR_EVERY_S = 0.2


def _parse_record(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(meta, payload) of one record line (either form, see the module's docstring)."""
    raw = raw.rstrip(b"\n")
    head, tab, payload = raw.partition(b"\t")
    if tab:
        meta: dict[str, Any] = json.loads(head)
        return meta, payload
    record: dict[str, Any] = json.loads(raw)
    return record, record.pop("payload").encode()


class Spool:
    """An on-disk, ordered, bounded queue of events with one sender."""

    def __init__(self, directory: Path, broker: NatsBroker, max_bytes: int = 1 << 30) -> None:
        self.directory = directory
        self.broker = broker
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._cursor_path = directory / "cursor"
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: Any = None
        self._writer_segment = -1
        self.sent = 0
        # What is on disk and not yet sent, also held in memory (bounded by ``max_bytes``), so
        # that sending never rereads the files: (segment, end offset, size, meta, payload).
        self._last: tuple[int, int] = self._cursor()
        self._saved = self._last
        self._saved_at = time.monotonic()
        self._queue: deque[tuple[int, int, int, dict[str, Any], bytes]] = deque()
        self._queued_bytes = 0
        self._load_unsent()

    # -- layout ---------------------------------------------------------------------------

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.jsonl"))

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:012d}.jsonl"

    def _cursor(self) -> tuple[int, int]:
        try:
            segment, offset = self._cursor_path.read_text().split()
            return int(segment), int(offset)
        except (OSError, ValueError):
            segments = self._segments()
            return (segments[0] if segments else 0), 0

    def _save_cursor(self, segment: int, offset: int) -> None:
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(f"{segment} {offset}")
        tmp.replace(self._cursor_path)
        self._saved = (segment, offset)

    def size(self) -> int:
        """Bytes written and not yet sent."""
        return self._queued_bytes

    def _load_unsent(self) -> None:
        """Records an earlier life of the agent wrote and did not send (after the cursor)."""
        segment, offset = self._cursor()
        for s in self._segments():
            if s < segment:
                self._path(s).unlink(missing_ok=True)
                continue
            start = offset if s == segment else 0
            with self._path(s).open("rb") as f:
                f.seek(start)
                data = f.read()
            position = start
            for raw in data[: data.rfind(b"\n") + 1].splitlines(keepends=True):
                position += len(raw)
                meta, payload = _parse_record(raw)
                self._queue.append((s, position, len(raw), meta, payload))
                self._queued_bytes += len(raw)

    # -- writing --------------------------------------------------------------------------

    async def put(self, event: Event | EncodedEvent) -> None:
        """Append ``event``; it is on disk when this returns. Waits while the spool is full."""
        while self.size() >= self.max_bytes:
            self._room.clear()
            log.warning("agent.spool_full", bytes=self.max_bytes)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), 1.0)
        if isinstance(event, EncodedEvent):
            meta = {"subject": event.subject, "stream": event.stream, "headers": event.headers}
            payload = event.payload
        else:
            meta = {"subject": event.subject(), "stream": event.STREAM, "headers": event.headers()}
            payload = event.model_dump_json().encode()
        line = json.dumps(meta, separators=(",", ":")).encode() + b"\t" + payload + b"\n"
        if self._writer is None:
            segments = self._segments()
            self._open_writer(segments[-1] if segments else 0)
        if self._writer.tell() + len(line) > SEGMENT_BYTES:
            self._open_writer(self._writer_segment + 1)
        self._writer.write(line)
        self._writer.flush()
        self._queue.append((self._writer_segment, self._writer.tell(), len(line), meta, payload))
        self._queued_bytes += len(line)
        self._idle.clear()
        self._wake.set()

    def _open_writer(self, segment: int) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._path(segment).open("ab")
        self._writer_segment = segment

    # -- sending --------------------------------------------------------------------------

    async def _publish(self, meta: dict[str, Any], payload: bytes) -> None:
        await self.broker.publish(
            payload,
            meta["subject"],
            headers=meta["headers"],
            stream=meta["stream"],
            timeout=5.0,
        )

    async def _send_available(self) -> None:
        backoff = 0.05
        while self._queue:
            segment, end, size, meta, payload = self._queue[0]
            try:
                await self._publish(meta, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: keep it, try again
                log.warning("agent.spool_retry", error=repr(exc), retry_in_s=backoff)
                self._save_progress()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            self._queue.popleft()
            self._queued_bytes -= size
            self._room.set()
            self.sent += 1
            self._last = (segment, end)
            # The cursor is saved now and then, not per record (nor per run's end): a crash
            # resends a few records, which the stream's duplicate window drops.
            if time.monotonic() - self._saved_at > CURSOR_EVERY_S:
                self._save_progress()

    def _save_progress(self) -> None:
        """Save the cursor (what is sent) and delete the segments wholly sent."""
        self._save_cursor(*self._sent_up_to())
        self._drop_sent_segments()
        self._saved_at = time.monotonic()

    def _sent_up_to(self) -> tuple[int, int]:
        if self._queue:
            segment, end, size, _, _ = self._queue[0]
            return segment, end - size
        return self._last

    def _drop_sent_segments(self) -> None:
        """Delete segments wholly sent; start a fresh one when the current one grew big."""
        segment, offset = self._sent_up_to()
        for s in self._segments():
            if s < segment:
                self._path(s).unlink(missing_ok=True)
        if (
            not self._queue
            and self._writer is not None
            and self._writer_segment == segment
            and offset > SEGMENT_BYTES // 2
        ):
            self._open_writer(segment + 1)
            self._path(segment).unlink(missing_ok=True)
            self._last = (segment + 1, 0)
            self._save_cursor(*self._last)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self._send_available()
            self._idle.set()
            if self._sent_up_to() != self._saved:
                # Sent since the cursor was saved: save it once things are quiet for a moment.
                # (asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the cancel
                # that stops the spool when a record arrives at that very moment.)
                try:
                    async with asyncio.timeout(CURSOR_EVERY_S):
                        await self._wake.wait()
                except TimeoutError:
                    self._save_progress()
            await self._wake.wait()

    def start(self) -> None:
        """Start sending (also what an earlier life of the agent left unsent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="spool-sender")

    async def drained(self, timeout: float) -> bool:
        """Wait until everything written so far is sent; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_until_done(self._task)
            self._task = None
        if self._sent_up_to() != self._saved:
            self._save_cursor(*self._sent_up_to())
        if self._writer is not None:
            self._writer.close()
            self._writer = None
