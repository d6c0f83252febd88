"""The whole event catalog: every event class, the streams that store them, the RPC subjects.

This is public API ("NATS subscribers for custom tooling"): versioned additively.
"""

from __future__ import annotations

from fleetlab_common.events.agent import (
    AgentHeartbeat,
    AgentLogAppended,
    ExperimentFinished,
    ExperimentStarted,
    LogLinesAppended,
    MetricsReported,
    ResultsReported,
    UsageSampled,
    WorkerFinished,
    WorkerStarted,
)
from fleetlab_common.events.api import (
    ExperimentDeleted,
    ExperimentStopRequested,
    ExperimentSubmitted,
    SweepFinished,
)
from fleetlab_common.events.base import Event
from fleetlab_common.events.logstream import MetricsSummarized
from fleetlab_common.events.scheduler import (
    AgentOffline,
    AgentOnline,
    ExperimentAssigned,
    ExperimentCancelled,
    ExperimentLost,
    ExperimentStopOrdered,
)
from fleetlab_common.events.webhooks import DeliveryFailed, DeliverySucceeded, EndpointPaused

# One stream per publishing service; heartbeats stay on core NATS and so out of AGENT.
STREAMS: dict[str, list[str]] = {
    "API": ["api.>"],
    "SCHEDULER": ["scheduler.>"],
    "AGENT": [
        "agent.experiment.>",
        "agent.log.>",
        "agent.agentlog.>",
        "agent.metrics.>",
        "agent.usage.>",
        "agent.results.>",
        "agent.worker.>",
    ],
    "WEBHOOKS": ["webhooks.>"],
    "LOGSTREAM": ["logstream.>"],
}

EVENTS: list[type[Event]] = [
    ExperimentSubmitted,
    ExperimentStopRequested,
    ExperimentDeleted,
    SweepFinished,
    ExperimentAssigned,
    ExperimentLost,
    ExperimentStopOrdered,
    ExperimentCancelled,
    AgentOnline,
    AgentOffline,
    AgentHeartbeat,
    ExperimentStarted,
    ExperimentFinished,
    LogLinesAppended,
    DeliverySucceeded,
    DeliveryFailed,
    EndpointPaused,
    AgentLogAppended,
    MetricsReported,
    UsageSampled,
    ResultsReported,
    MetricsSummarized,
    WorkerStarted,
    WorkerFinished,
]

EVENTS_BY_TYPE: dict[str, type[Event]] = {cls.event_type(): cls for cls in EVENTS}


def publisher_of(cls: type[Event]) -> str:
    """The service that publishes ``cls``: the first token of its type names its owner."""
    return cls.event_type().split(".", 1)[0]


class Rpc:
    """Request/reply subjects on core NATS (answers, not facts: never stored)."""

    @staticmethod
    def health(service: str) -> str:
        """Each service answers its health on ``rpc.<service>.health``."""
        return f"rpc.{service}.health"

    LOG_LINES = "rpc.logstream.lines"
    AGENTS = "rpc.scheduler.agents"
    # The agent asks the API for presigned upload URLs for a run's outputs (it holds no
    # storage credential of its own).
    PRESIGN_OUTPUTS = "rpc.api.outputs.presign"
    # The agent asks the API for a short-lived download URL of a code snapshot by its digest.
    PRESIGN_CODE = "rpc.api.code.presign"
    # The agent asks the API for a short-lived download URL of an earlier experiment's
    # artifact named as an input (artifact://<experiment id>/<name>).
    PRESIGN_INPUT = "rpc.api.inputs.presign"
    AGENT_DRAIN = "rpc.scheduler.agents.drain"
    AGENT_REMOVE = "rpc.scheduler.agents.remove"
    WHY_WAITING = "rpc.scheduler.why"
    AGENT_LOG = "rpc.logstream.agentlog"
    METRICS = "rpc.logstream.metrics"
    METRICS_INGEST = "rpc.logstream.metrics.ingest"
    # Resource use of an experiment or an agent; the latest machine sample of agents.
    USAGE = "rpc.logstream.usage"
    USAGE_LATEST = "rpc.logstream.usage.latest"

    @staticmethod
    def webhooks(verb: str) -> str:
        """The webhooks service answers ``rpc.webhooks.<verb>`` (see ``WEBHOOKS_VERBS``)."""
        return f"rpc.webhooks.{verb}"

    # What the webhooks service answers: endpoints and their deliveries, for the API.
    WEBHOOKS_VERBS = (
        "create",
        "list",
        "get",
        "update",
        "delete",
        "deliveries",
        "delivery",
        "resend",
    )
