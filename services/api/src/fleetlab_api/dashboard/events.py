"""``GET /api/v1/events``: experiment and agent changes as Server-Sent Events, pushed.

The stream subscribes on core NATS to the public events that change an experiment's status
or an agent's state (JetStream hands every stored message to core subscribers too) and turns
each into a small message the dashboard applies as it is: the status an event implies
travels with it, so a page never has to read the record back to learn it.

Events: ``experiment`` (``{experiment_id, project, status, reason, agent_id, exit_code,
attempt, type, occurred_at}``; ``project`` on submission only; ``status`` null when the
event changes none, as a stop request), ``agent`` (``{agent_id, online, slots, busy,
running, type}``), ``usage`` (``{agent_id, sample}``: a machine's use; with ``?experiment=``
``{experiment_id, sample}``: the run's), ``metrics`` (``{experiment_id, points, scores}``) and
``results`` (``{experiment_id, results}``: results-folder files, to merge), both only with
``?experiment=``, ``scores`` (``{experiment_id, scores}``: a run's new ``_scores``) without
it, and ``resync`` (the viewer fell behind and events were dropped: read the state again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from fleetlab_api.deps import StateDep
from fleetlab_api.errors import InvalidError
from fleetlab_common.events import (
    AgentHeartbeat,
    AgentOffline,
    AgentOnline,
    ExperimentAssigned,
    ExperimentCancelled,
    ExperimentFinished,
    ExperimentLost,
    ExperimentStarted,
    ExperimentStopRequested,
    ExperimentSubmitted,
    MetricsReported,
    ResultsReported,
    UsageSampled,
)

router = APIRouter(tags=["events"])

# Messages held for a viewer that reads slower than events come; past this it gets `resync`.
MAX_QUEUED = 2000
KEEPALIVE_S = 15.0

EXPERIMENT_SUBJECTS = (
    ExperimentSubmitted.subscribe_subject(),
    ExperimentAssigned.subscribe_subject(),
    ExperimentStarted.subscribe_subject(),
    ExperimentFinished.subscribe_subject(),
    ExperimentCancelled.subscribe_subject(),
    ExperimentLost.subscribe_subject(),
    ExperimentStopRequested.subscribe_subject(),
)
AGENT_SUBJECTS = (
    AgentOnline.subscribe_subject(),
    AgentOffline.subscribe_subject(),
    AgentHeartbeat.subscribe_subject(),
)


def experiment_message(body: dict[str, Any]) -> dict[str, Any] | None:
    """What the dashboard needs of one experiment event, with the status it implies."""
    kind = body.get("type")
    status: str | None
    reason = body.get("reason")
    if kind == ExperimentSubmitted.event_type():
        status, reason = "queued", None
    elif kind == ExperimentAssigned.event_type():
        status, reason = "queued", f"assigned to {body.get('agent_id')}"
    elif kind == ExperimentStarted.event_type():
        status, reason = "running", None
    elif kind == ExperimentFinished.event_type():
        status = body.get("status")
    elif kind == ExperimentCancelled.event_type():
        status = "stopped"
    elif kind == ExperimentLost.event_type():
        status = "queued" if body.get("requeued") else "lost"
    elif kind == ExperimentStopRequested.event_type():
        status, reason = None, "stopping"
    else:
        return None
    return {
        "type": kind,
        "experiment_id": body.get("experiment_id"),
        "project": body.get("project"),
        "status": status,
        "reason": reason,
        "agent_id": body.get("agent_id"),
        "exit_code": body.get("exit_code"),
        "attempt": body.get("attempt"),
        "occurred_at": body.get("occurred_at"),
    }


def agent_message(body: dict[str, Any]) -> dict[str, Any] | None:
    kind = body.get("type")
    if kind == AgentHeartbeat.event_type():
        running = body.get("running") or []
        return {
            "type": kind,
            "agent_id": body.get("agent_id"),
            "online": True,
            "slots": body.get("slots"),
            "busy": len(running),
            "running": running,
        }
    if kind in (AgentOnline.event_type(), AgentOffline.event_type()):
        return {
            "type": kind,
            "agent_id": body.get("agent_id"),
            "online": kind == AgentOnline.event_type(),
        }
    return None


class EventFeed:
    """One viewer's subscriptions and its queue of SSE frames."""

    def __init__(self, experiment: uuid.UUID | None) -> None:
        self.experiment = str(experiment) if experiment else None
        self.queue: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUED)
        self.subs: list[Subscription] = []
        self.overflowed = False
        # Heartbeats come every few seconds per agent: only a change goes out.
        self.agents: dict[str, tuple[bool, int, int]] = {}

    def put(self, event: str, data: dict[str, Any]) -> None:
        frame = f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed = True

    async def on_experiment(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            message = experiment_message(json.loads(msg.data))
            if message is None:
                return
            if self.experiment and message["experiment_id"] != self.experiment:
                return
            self.put("experiment", message)

    async def on_agent(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            message = agent_message(json.loads(msg.data))
            if message is None:
                return
            key = (bool(message["online"]), message.get("slots") or 0, message.get("busy") or 0)
            heartbeat = message["type"] == AgentHeartbeat.event_type()
            if heartbeat and self.agents.get(message["agent_id"]) == key:
                return
            self.agents[message["agent_id"]] = key
            self.put("agent", message)

    async def on_usage(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
            body = json.loads(msg.data)
            if self.experiment is None:
                self.put("usage", {"agent_id": body["agent_id"], "sample": body["machine"]})
                return
            for sample in body.get("experiments") or []:
                if sample.get("experiment_id") == self.experiment:
                    self.put("usage", {"experiment_id": self.experiment, "sample": sample})

    async def on_scores(self, msg: Msg) -> None:
        """Every run's new scores (from its metrics or its results folder), in short."""
        if b'"scores":{}' in msg.data and b"_scores" not in msg.data:
            return  # the common case, a batch of points: no parsing
        with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
            body = json.loads(msg.data)
            scores = body.get("scores") or (body.get("results") or {}).get("_scores") or {}
            if scores:
                self.put("scores", {"experiment_id": body["experiment_id"], "scores": scores})

    async def on_results(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, AttributeError, KeyError):
            body = json.loads(msg.data)
            self.put(
                "results",
                {
                    "experiment_id": body["experiment_id"],
                    "attempt": body.get("attempt"),
                    "results": body.get("results") or {},
                },
            )

    async def on_metrics(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, AttributeError, KeyError):
            body = json.loads(msg.data)
            points = [
                {"name": p["name"], "value": p["value"], "step": p.get("step"), "ts": p["ts"]}
                for p in body.get("points") or []
            ]
            self.put(
                "metrics",
                {
                    "experiment_id": body["experiment_id"],
                    "attempt": body.get("attempt"),
                    "points": points,
                    "scores": body.get("scores") or {},
                },
            )


@router.get(
    "/api/v1/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events(
    state: StateDep,
    experiment: Annotated[
        str | None,
        Query(description="Only this experiment's events, with its metric points as they come"),
    ] = None,
) -> StreamingResponse:
    """Experiment status changes, agent state and resource use, live, as Server-Sent Events
    (``experiment``, ``agent``, ``usage``; ``metrics`` and ``results`` with ``?experiment=``,
    ``scores`` without; ``resync`` after a viewer fell behind)."""
    experiment_id = None
    if experiment:
        try:
            experiment_id = uuid.UUID(experiment)
        except ValueError:
            raise InvalidError(
                "invalid experiment id", {"experiment": "not an experiment id"}
            ) from None
    feed = EventFeed(experiment_id)
    nc = state.broker.connection
    for subject in EXPERIMENT_SUBJECTS:
        feed.subs.append(await nc.subscribe(subject, cb=feed.on_experiment))
    feed.subs.append(await nc.subscribe(UsageSampled.subscribe_subject(), cb=feed.on_usage))
    if experiment_id is None:
        for subject in AGENT_SUBJECTS:
            feed.subs.append(await nc.subscribe(subject, cb=feed.on_agent))
        for kind in (MetricsReported, ResultsReported):
            feed.subs.append(await nc.subscribe(kind.subscribe_subject(), cb=feed.on_scores))
    else:
        for kind, cb in ((MetricsReported, feed.on_metrics), (ResultsReported, feed.on_results)):
            subject = f"{kind.event_type()}.{experiment_id}"
            feed.subs.append(await nc.subscribe(subject, cb=cb))
    await nc.flush()

    async def frames() -> AsyncIterator[str]:
        try:
            yield "retry: 1000\n\nevent: ready\ndata: {}\n\n"
            while True:
                try:
                    frame = await asyncio.wait_for(feed.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield frame
                if feed.overflowed and feed.queue.empty():
                    feed.overflowed = False
                    yield "event: resync\ndata: {}\n\n"
        finally:
            for sub in feed.subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
