"""Reading an experiment's output: stored pages from logstream, and live following.

Live lines are pushed, never polled: a follower subscribes on core NATS to
``agent.log.appended.<experiment_id>`` (JetStream hands every stored message to core
subscribers too) before it reads what is stored, and merges the two by ``seq``: each line
goes out once, in order, with no gap. A gap between what is stored and what came live (a batch
still on its way to logstream, a subscription that overflowed) is filled from the store.
The end comes from ``agent.experiment.finished`` (once line ``log_lines`` went out) or
``scheduler.experiment.lost``, heard the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from fleetlab_api.errors import ApiError
from fleetlab_api.experiments import service as experiments
from fleetlab_api.logs.schemas import LogEnd, Skipped
from fleetlab_api.state import State
from fleetlab_common.api.experiments import TERMINAL, Experiment
from fleetlab_common.events import (
    ExperimentFinished,
    ExperimentLost,
    LogLinesAppended,
    Rpc,
)
from fleetlab_common.log import get_logger

log = get_logger(__name__)

Line = dict[str, Any]  # {"seq", "stream", "ts", "line"}, as logstream and the agent send it

# Unsubscriptions under way (a task must be referenced until it ends).
_CLEANUPS: set[asyncio.Task[None]] = set()

# Live lines held for a viewer that reads slower than the run prints, counted from the next
# line it is to get; lines further ahead are not held, and are read back from the store when
# the viewer gets to them.
MAX_PENDING = 50_000


async def ask(
    broker: NatsBroker, subject: str, query: dict[str, Any] | bytes, timeout_s: float
) -> Any:
    """One request to logstream; 503 when it does not answer."""
    try:
        reply = await broker.request(query, subject, timeout=timeout_s)
    except TimeoutError:
        raise ApiError(503, "the log service did not answer in time") from None
    except NoRespondersError:
        # NATS says at once that nobody listens: logstream is not running.
        raise ApiError(503, "the log service did not answer: it is not running") from None
    return await reply.decode()


# How long reading a finished run's whole log waits for lines still on their way.
WHOLE_LOG_WAIT_S = 8.0


async def fetch_page(
    broker: NatsBroker,
    experiment: Experiment,
    *,
    from_seq: int,
    to_seq: int | None = None,
    stream: str | None = None,
    min_count: int | None = None,
    wait_s: float = 2.0,
    limit: int = 5000,
    timeout_s: float,
) -> dict[str, Any]:
    """One page of stored lines of the experiment's latest attempt (see ``LinesQuery``)."""
    query = {
        "experiment_id": str(experiment.id),
        "attempt": experiment.attempt,
        "stream": stream,
        "from_seq": from_seq,
        "to_seq": to_seq,
        "limit": limit,
        "min_count": min_count,
        "wait_s": wait_s,
    }
    page = await ask(broker, Rpc.LOG_LINES, query, timeout_s + (wait_s if min_count else 0))
    if not isinstance(page, dict) or "lines" not in page:
        raise ApiError(503, "the log service gave an unexpected answer")
    return page


async def read_lines(
    broker: NatsBroker,
    experiment: Experiment,
    *,
    stream: str | None,
    from_seq: int,
    to_seq: int | None,
    timeout_s: float,
) -> list[Line]:
    """Every stored line in range, page by page. For a finished run the API knows how many
    lines it produced, so logstream waits briefly for a last batch still on its way."""
    expected = experiment.log_lines if experiment.status in TERMINAL else None
    lines: list[Line] = []
    next_seq: int | None = from_seq
    while next_seq is not None:
        page = await fetch_page(
            broker,
            experiment,
            from_seq=next_seq,
            to_seq=to_seq,
            stream=stream,
            min_count=expected,
            # A run's last batches may still be on their way (a busy machine, a broker that
            # just came back): the whole-log read waits for them longer than a live view.
            wait_s=WHOLE_LOG_WAIT_S,
            timeout_s=timeout_s,
        )
        lines += page["lines"]
        next_seq = page.get("next_seq")
    return lines


@dataclass
class Item:
    """One thing a follower sends: lines, the skip marker, the end, or a keepalive."""

    kind: Literal["lines", "skipped", "end", "keepalive"]
    lines: list[Line] = field(default_factory=list)
    skipped: Skipped | None = None
    end: LogEnd | None = None


def _end_of_record(experiment: Experiment) -> LogEnd:
    return LogEnd(
        status=experiment.status,
        exit_code=experiment.exit_code,
        signal=experiment.signal,
        reason=experiment.status_reason,
        log_lines=experiment.log_lines,
    )


async def _unsubscribe(subs: list[Subscription]) -> None:
    for sub in subs:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class LogFollower:
    """One viewer's live view of one experiment's latest attempt.

    ``from_seq`` given: every line from it on (an exact resume). Otherwise a late viewer of
    a log longer than ``head + tail`` lines gets the first ``head``, one skip marker, the last
    ``tail``, then live lines. ``stream`` filters what is sent (numbering is unchanged).
    """

    def __init__(
        self,
        state: State,
        experiment: Experiment,
        *,
        from_seq: int | None,
        head: int,
        tail: int,
        stream: str | None = None,
        keepalive_s: float = 15.0,
    ) -> None:
        self.state = state
        self.experiment = experiment
        self.from_seq = from_seq
        self.head = head
        self.tail = tail
        self.stream = stream
        self.keepalive_s = keepalive_s
        self.next_seq = from_seq or 1
        self.known_last = 0  # the highest seq known to exist (stored or heard live)
        self.pending: dict[int, Line] = {}
        self.end: LogEnd | None = None
        self.end_at: int | None = None  # the last seq to send before the end
        self._wake = asyncio.Event()
        self._subs: list[Subscription] = []
        self._timeout = state.settings.rpc_timeout_s

    # -- what NATS pushes ---------------------------------------------------------------------

    async def _on_lines(self, msg: Msg) -> None:
        try:
            body = orjson.loads(msg.data)
            if body.get("attempt", 1) != self.experiment.attempt:
                return
            lines: list[Line] = body["lines"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        # Held: the lines the viewer will send next, up to MAX_PENDING ahead of it. Lines
        # further ahead are read back from the store when the viewer gets to them.
        if not lines:
            return
        floor = self.next_seq
        ceiling = floor + MAX_PENDING
        first, last = lines[0]["seq"], lines[-1]["seq"]
        if floor <= first and last < ceiling and last - first == len(lines) - 1:
            # The usual batch: consecutive numbers, all within what is held.
            self.pending.update({ln["seq"]: ln for ln in lines})
        else:
            pending = self.pending
            for ln in lines:
                seq = ln["seq"]
                if floor <= seq < ceiling:
                    pending[seq] = ln
                last = max(last, seq)
        self.known_last = max(self.known_last, last)
        self._wake.set()

    async def _on_end(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            return
        if body.get("experiment_id") != str(self.experiment.id):
            return
        if body.get("attempt", 1) != self.experiment.attempt:
            return
        if body.get("type") == ExperimentLost.event_type():
            self.end = LogEnd(status="lost", reason=body.get("reason"))
        else:
            self.end = LogEnd.model_validate(body)
            self.end_at = self.end.log_lines
        self._wake.set()

    async def __aenter__(self) -> LogFollower:
        nc = self.state.broker.connection
        eid = self.experiment.id
        self._subs = [
            await nc.subscribe(f"{LogLinesAppended.event_type()}.{eid}", cb=self._on_lines),
            await nc.subscribe(ExperimentFinished.event_type(), cb=self._on_end),
            await nc.subscribe(ExperimentLost.event_type(), cb=self._on_end),
        ]
        # The server has the subscriptions before anything is read from the store: a line
        # published from now on is heard live, one published before is stored or on its way.
        await nc.flush()
        await self._refresh_status()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Give the subscriptions back; safe to call twice. A viewer that hung up is being
        cancelled (and stays so: every await in its task is cancelled again), so the work runs
        in a task of its own that the cancellation does not reach."""
        subs, self._subs = self._subs, []
        if not subs:
            return
        task = asyncio.create_task(_unsubscribe(subs), name="log-follower-unsubscribe")
        _CLEANUPS.add(task)
        task.add_done_callback(_CLEANUPS.discard)
        await asyncio.shield(task)

    async def _refresh_status(self) -> None:
        """Read the record: an end that came before the subscriptions is heard here."""
        async with self.state.db().acquire() as conn:
            record = await experiments.get(conn, str(self.experiment.id))
        if record.attempt != self.experiment.attempt:
            # A newer attempt started: this one is over, whatever it was.
            self.end = self.end or LogEnd(status="lost", reason="a newer attempt started")
        elif record.status in TERMINAL and self.end is None:
            self.end = _end_of_record(record)
            self.end_at = record.log_lines if record.status != "lost" else None

    # -- the store ----------------------------------------------------------------------------

    async def _page(self, **kw: Any) -> dict[str, Any]:
        page = await fetch_page(self.state.broker, self.experiment, timeout_s=self._timeout, **kw)
        self.known_last = max(self.known_last, int(page.get("last_seq") or 0))
        return page

    async def _read_range(self, from_seq: int, to_seq: int) -> list[Line]:
        lines: list[Line] = []
        next_seq: int | None = from_seq
        while next_seq is not None:
            page = await self._page(from_seq=next_seq, to_seq=to_seq)
            lines += page["lines"]
            next_seq = page.get("next_seq")
        return lines

    def _out(self, lines: list[Line]) -> Item:
        if self.stream is not None:
            lines = [ln for ln in lines if ln["stream"] == self.stream]
        return Item("lines", lines=lines)

    # -- the view -----------------------------------------------------------------------------

    async def attach(self) -> AsyncIterator[Item]:
        """What a viewer gets before live lines: the whole log from ``from_seq``, or head,
        skip marker and tail. Errors (logstream away) surface here, before a response."""
        wait_for = self.end_at if self.end is not None else None
        first = await self._page(
            from_seq=self.next_seq, min_count=wait_for, limit=max(1, min(self.head, 5000))
        )
        if self.end_at is not None:
            self.known_last = max(self.known_last, self.end_at)
        last = self.known_last
        if self.from_seq is None and last > self.head + self.tail:
            head = first["lines"][: self.head]
            if len(head) < self.head or (head and head[-1]["seq"] < self.head):
                head = await self._read_range(1, self.head)
            yield self._out(head)
            cut_to = last - self.tail
            yield Item(
                "skipped",
                skipped=Skipped(skipped=cut_to - self.head, from_seq=self.head + 1, to_seq=cut_to),
            )
            self.next_seq = cut_to + 1
            for seq in [s for s in self.pending if s < self.next_seq]:
                del self.pending[seq]

    async def follow(self) -> AsyncIterator[Item]:
        """Lines in order from ``next_seq``, live as they come, then the end."""
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        failures = 0
        while True:
            # Cleared before looking: whatever NATS pushes from here on wakes the wait below.
            self._wake.clear()
            if self.end is not None and self.end_at is None:
                # Lost: send what is stored, then end.
                with contextlib.suppress(ApiError):
                    await self._page(from_seq=self.next_seq, limit=1)
                self.end_at = self.known_last
            if self.end is not None and self.end_at is not None and self.next_seq > self.end_at:
                yield Item("end", end=self.end)
                return
            if self.next_seq in self.pending:
                batch: list[Line] = []
                while self.next_seq in self.pending:
                    batch.append(self.pending.pop(self.next_seq))
                    self.next_seq += 1
                yield self._out(batch)
                idle_since = loop.time()
                continue
            target = self.end_at if self.end_at is not None else self.known_last
            if target >= self.next_seq or self.pending:
                to_seq = min(self.pending) - 1 if self.pending else None
                try:
                    page = await self._page(
                        from_seq=self.next_seq, to_seq=to_seq, min_count=self.next_seq, wait_s=1.0
                    )
                    failures = 0
                except ApiError:
                    # Logstream restarting: live lines keep coming; the store comes back.
                    failures += 1
                    await self._sleep_or_wake(min(0.1 * 2**failures, 2.0))
                    continue
                got: list[Line] = []
                for ln in page["lines"]:
                    if ln["seq"] != self.next_seq:
                        break
                    got.append(ln)
                    self.pending.pop(self.next_seq, None)
                    self.next_seq += 1
                if got:
                    yield self._out(got)
                    idle_since = loop.time()
                else:
                    await self._sleep_or_wake(0.2)
                continue
            woke = await self._sleep_or_wake(self.keepalive_s)
            if not woke and loop.time() - idle_since >= self.keepalive_s:
                yield Item("keepalive")
                idle_since = loop.time()
                await self._refresh_status()

    async def _sleep_or_wake(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True
