"""Tailing a run's metrics file (``FLEETLAB_METRICS_FILE``) and sending its points.

Each line appended to the file is one JSON object: ``{"step": 3, "loss": 0.21}`` (``step``
and ``ts`` optional; ``ts`` in Unix seconds or ISO 8601), or ``{"_scores": {...}}`` for the
run's scores. The agent reads what was appended every ``interval_s`` while the run goes, and
once more after it ended (a last line without its newline counts then). A line that is not
such an object (not JSON, a value that is not a finite number, a step that is not an
integer) is skipped and counted: the count travels in the batch and is logged as a warning;
the rest of the file is kept.

When the project turns ``printed_metrics`` on (ML Experimenter's charts), a stdout line
``#<name> <step> <value>`` (``#loss 3 0.21``: an integer step, a finite number) is a point of
metric ``name`` as well as a log line; it goes out with the file's points. A line starting
with ``#`` that is not of that shape is only a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from fleetlab_agent.runner import METRICS_FILE, Run, wire_now
from fleetlab_common.events import EncodedEvent, Event, MetricsReported
from fleetlab_common.log import get_logger

log = get_logger(__name__)

# Points per published batch: a batch stays well under NATS's 1 MiB message limit.
MAX_BATCH_POINTS = 4000
# Bytes read from the file at a time.
_READ_BYTES = 4 * 1024 * 1024

# A point as it goes on the wire, the JSON object of ``MetricPoint``: {"name", "value",
# "step", "ts"} (and "rank" for a worker of a multi-worker run). Plain dicts, not models: a
# run can log a hundred thousand points a second, and a model per point was most of the
# agent's time.
WirePoint = dict[str, Any]
PublishMetrics = Callable[[list[WirePoint], dict[str, float], int], Awaitable[None]]


_PRINTED = re.compile(r"#(\S+)[ \t]+([+-]?\d+)[ \t]+(\S+)[ \t]*")


def parse_printed(text: str, now: str) -> WirePoint | None:
    """``#loss 3 0.21`` -> loss = 0.21 at step 3 (``now``: ISO 8601); None for any other line."""
    match = _PRINTED.fullmatch(text)
    if match is None:
        return None
    try:
        value = float(match[3])
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return {"name": match[1], "value": value, "step": int(match[2]), "ts": now}


class MalformedLineError(ValueError):
    """A metrics line that is not a JSON object of numbers."""


def _ts(raw: Any, now: str) -> str:
    """A line's ``ts`` as ISO 8601 text in UTC (``now`` when it has none)."""
    if raw is None:
        return now
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        try:
            return datetime.fromtimestamp(raw, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            raise MalformedLineError(f"bad ts {raw!r}") from None
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedLineError(f"bad ts {raw!r}") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
    raise MalformedLineError(f"bad ts {raw!r}")


def _finite(key: str, value: Any) -> float:
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return float(value)
    elif kind is int:
        return float(value)
    raise MalformedLineError(f"{key}={value!r} is not a finite number")


_NOT_METRICS = frozenset(("step", "ts", "_scores"))


def parse_line(text: bytes | str, now: str) -> tuple[list[WirePoint], dict[str, float]]:
    """The points and scores of one line (``now``: ISO 8601, the time of a line without
    ``ts``); :class:`MalformedLineError` when it has none."""
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise MalformedLineError("not JSON") from None
    if not isinstance(record, dict):
        raise MalformedLineError("not a JSON object")
    step = record.get("step")
    if step is not None and type(step) is not int:
        raise MalformedLineError(f"step={step!r} is not an integer")
    ts = _ts(record.get("ts"), now)
    scores: dict[str, float] = {}
    raw_scores = record.get("_scores")
    if raw_scores is not None:
        if not isinstance(raw_scores, dict):
            raise MalformedLineError("_scores is not an object")
        scores = {str(k): _finite(k, v) for k, v in raw_scores.items()}
    points = [
        {"name": key, "value": _finite(key, value), "step": step, "ts": ts}
        for key, value in record.items()
        if key not in _NOT_METRICS
    ]
    if not points and not scores:
        raise MalformedLineError("no metric in the line")
    return points, scores


@dataclass
class MetricsTailer:
    """Reads what a run appends to its metrics file and hands it to ``publish``."""

    path: Path
    publish: PublishMetrics
    interval_s: float = 0.25
    offset: int = 0
    skipped: int = 0
    _partial: bytes = b""
    # Points from printed lines (``printed_metrics``), sent with the file's next read.
    _printed: list[WirePoint] = field(default_factory=list)
    _more: bool = False  # the last read stopped at _READ_BYTES: more is waiting
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def read_new(self, *, final: bool = False) -> tuple[list[WirePoint], dict[str, float], int]:
        """Points, scores and the count of malformed lines appended since the last read."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(_READ_BYTES)
        except FileNotFoundError:
            return [], {}, 0
        self.offset += len(data)
        self._more = len(data) == _READ_BYTES
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        if final and not self._more and self._partial:
            lines.append(self._partial)
            self._partial = b""
        now = wire_now()
        points: list[WirePoint] = []
        scores: dict[str, float] = {}
        bad = 0
        for raw in lines:
            if not raw.strip():
                continue
            try:
                got, got_scores = parse_line(raw, now)
            except MalformedLineError:
                bad += 1
                continue
            points += got
            scores.update(got_scores)
        return points, scores, bad

    def printed(self, text: str) -> None:
        """A stdout line of the run: kept as a point when it reads ``#<name> <step> <value>``."""
        point = parse_printed(text, wire_now())
        if point is not None:
            self._printed.append(point)

    async def _drain(self, *, final: bool) -> None:
        while True:
            points, scores, bad = await asyncio.to_thread(self.read_new, final=final)
            if self._printed:
                points, self._printed = self._printed + points, []
            if bad:
                self.skipped += bad
                log.warning(
                    "metrics.malformed_lines", path=str(self.path), skipped=bad, total=self.skipped
                )
            chunks = [
                points[i : i + MAX_BATCH_POINTS] for i in range(0, len(points), MAX_BATCH_POINTS)
            ] or ([[]] if scores or bad else [])
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                await self.publish(chunk, scores if last else {}, bad if last else 0)
            if not self._more:
                return

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._drain(final=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)

    def start(self) -> MetricsTailer:
        self._task = asyncio.create_task(self._run(), name=f"metrics-{self.path.parent.name}")
        return self

    async def close(self) -> int:
        """Stop tailing, read the file one last time; returns the malformed lines skipped."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._drain(final=True)
        return self.skipped


def tail_run(
    send: Callable[[Event | EncodedEvent], Awaitable[None]], agent_id: str, run: Run
) -> MetricsTailer:
    """Start tailing ``run``'s metrics file; its points go to ``send`` (the agent's spool) as
    ``agent.metrics.reported`` events."""

    async def publish(points: list[WirePoint], scores: dict[str, float], skipped: int) -> None:
        if run.world_size > 1:  # a worker of a multi-worker experiment: its points keep its rank
            points = [{**p, "rank": run.rank} for p in points]
        await send(
            MetricsReported.encode(
                run.experiment_id, agent_id, run.attempt, points, scores, skipped
            )
        )

    return MetricsTailer(run.workdir / METRICS_FILE, publish).start()
