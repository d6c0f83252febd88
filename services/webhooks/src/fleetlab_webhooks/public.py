"""The public webhook events: their names, which internal events they come from, and the
payload an endpoint receives.

Public names stay the same whatever the internal subjects become. ``sweep.finished`` comes
from the API's ``api.sweep.finished`` (the API's read model knows when every trial ended).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fleetlab_common.events import (
    AgentOffline,
    AgentOnline,
    Event,
    ExperimentCancelled,
    ExperimentFinished,
    ExperimentLost,
    ExperimentStarted,
    ExperimentSubmitted,
    SweepFinished,
)

PUBLIC_EVENTS: tuple[str, ...] = (
    "experiment.submitted",
    "experiment.started",
    "experiment.finished",
    "experiment.stopped",
    "experiment.lost",
    "sweep.finished",
    "agent.online",
    "agent.offline",
)

# The internal events the webhooks service consumes (one durable consumer each).
CONSUMED: tuple[type[Event], ...] = (
    ExperimentSubmitted,
    ExperimentStarted,
    ExperimentFinished,
    ExperimentLost,
    ExperimentCancelled,
    AgentOnline,
    AgentOffline,
    SweepFinished,
)


def public_type(event: Event) -> str | None:
    """The public name of ``event``, or None when it is not delivered."""
    match event:
        case ExperimentSubmitted():
            return "experiment.submitted"
        case ExperimentStarted():
            return "experiment.started"
        case ExperimentFinished():
            return "experiment.stopped" if event.status == "stopped" else "experiment.finished"
        case ExperimentLost():
            return "experiment.lost"
        case ExperimentCancelled():
            # Stopped before it ever ran.
            return "experiment.stopped"
        case AgentOnline():
            return "agent.online"
        case AgentOffline():
            return "agent.offline"
        case SweepFinished():
            return "sweep.finished"
    return None


def experiment_id_of(event: Event) -> uuid.UUID | None:
    value = getattr(event, "experiment_id", None)
    return value if isinstance(value, uuid.UUID) else None


def experiment_facts(event: Event) -> dict[str, Any]:
    """What ``event`` says about its experiment, as fields of the experiment record."""
    at = event.occurred_at.isoformat()
    match event:
        case ExperimentSubmitted():
            return {
                "project": event.project,
                "project_id": str(event.project_id),
                "options": event.options,
                "priority": event.priority,
                "status": "queued",
                "attempt": 1,
                "submitted_at": at,
            }
        case ExperimentStarted():
            return {
                "status": "running",
                "agent_id": event.agent_id,
                "attempt": event.attempt,
                "pid": event.pid,
                "argv": event.argv,
                "started_at": at,
            }
        case ExperimentFinished():
            facts: dict[str, Any] = {
                "status": event.status,
                "agent_id": event.agent_id,
                "attempt": event.attempt,
                "exit_code": event.exit_code,
                "signal": event.signal,
                "reason": event.reason,
                "log_lines": event.log_lines,
                "finished_at": at,
            }
            if event.started_at is not None:
                facts["started_at"] = event.started_at.isoformat()
            return facts
        case ExperimentLost():
            return {
                "status": "queued" if event.requeued else "lost",
                "agent_id": event.agent_id,
                "attempt": event.attempt + 1 if event.requeued else event.attempt,
                "reason": event.reason,
                "requeued": event.requeued,
                **({} if event.requeued else {"finished_at": at}),
            }
        case ExperimentCancelled():
            return {"status": "stopped", "reason": event.reason, "finished_at": at}
    return {}


def agent_facts(event: Event) -> dict[str, Any]:
    match event:
        case AgentOnline():
            return {"agent_id": event.agent_id, "hostname": event.hostname, "online": True}
        case AgentOffline():
            return {"agent_id": event.agent_id, "reason": event.reason, "online": False}
    return {}


def sweep_facts(event: Event) -> dict[str, Any]:
    """What ``api.sweep.finished`` tells: the sweep, its trials by status, the best trial."""
    if not isinstance(event, SweepFinished):
        return {}
    facts: dict[str, Any] = json.loads(event.model_dump_json(exclude={"id", "occurred_at", "type"}))
    return facts


def payload(event: Event, public: str, record: dict[str, Any] | None, max_bytes: int) -> str:
    """The JSON body of a standard delivery: ``{"type", "id", "timestamp", "data"}``.

    ``data`` holds ``experiment`` (the record, as the events told it), ``sweep`` or ``agent``.
    A body over ``max_bytes`` loses the record's bulky fields and says ``"truncated": true``.
    """
    data: dict[str, Any] = (
        {"experiment": record}
        if record is not None
        else {"sweep": sweep_facts(event)}
        if isinstance(event, SweepFinished)
        else {"agent": agent_facts(event)}
    )
    body: dict[str, Any] = {
        "type": public,
        "id": str(event.id),
        "timestamp": event.occurred_at.isoformat(),
        "source": event.type,
        "data": data,
    }
    text = json.dumps(body, separators=(",", ":"), default=str)
    if len(text.encode()) <= max_bytes or record is None:
        return text
    keep = ("id", "project", "project_id", "status", "attempt", "agent_id", "exit_code")
    body["data"] = {"experiment": {k: record[k] for k in keep if k in record}}
    body["truncated"] = True
    return json.dumps(body, separators=(",", ":"), default=str)
