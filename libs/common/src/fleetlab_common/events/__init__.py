"""The event catalog. Models live here once; services import them, never each other."""

from fleetlab_common.events.agent import (
    AgentHardware,
    AgentHeartbeat,
    AgentLogAppended,
    AgentLogLine,
    ExperimentFinished,
    ExperimentOutcome,
    ExperimentStarted,
    GpuInfo,
    LogLine,
    LogLinesAppended,
    MetricPoint,
    MetricsReported,
    OutputFile,
    StagedInput,
)
from fleetlab_common.events.api import ExperimentStopRequested, ExperimentSubmitted
from fleetlab_common.events.base import Event, utcnow
from fleetlab_common.events.catalog import EVENTS, EVENTS_BY_TYPE, STREAMS, Rpc, publisher_of
from fleetlab_common.events.scheduler import (
    AgentOffline,
    AgentOnline,
    ExperimentAssigned,
    ExperimentCancelled,
    ExperimentLost,
    ExperimentStopOrdered,
)
from fleetlab_common.events.webhooks import DeliveryFailed, DeliverySucceeded, EndpointPaused

__all__ = [
    "EVENTS",
    "EVENTS_BY_TYPE",
    "STREAMS",
    "AgentHardware",
    "AgentHeartbeat",
    "AgentLogAppended",
    "AgentLogLine",
    "AgentOffline",
    "AgentOnline",
    "DeliveryFailed",
    "DeliverySucceeded",
    "EndpointPaused",
    "Event",
    "ExperimentAssigned",
    "ExperimentCancelled",
    "ExperimentFinished",
    "ExperimentLost",
    "ExperimentOutcome",
    "ExperimentStarted",
    "ExperimentStopOrdered",
    "ExperimentStopRequested",
    "ExperimentSubmitted",
    "GpuInfo",
    "LogLine",
    "LogLinesAppended",
    "MetricPoint",
    "MetricsReported",
    "OutputFile",
    "Rpc",
    "StagedInput",
    "publisher_of",
    "utcnow",
]
