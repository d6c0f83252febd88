"""Events published by agents (stream ``AGENT``; heartbeats on core NATS)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from fleetlab_common.events.base import EncodedEvent, Event

ExperimentOutcome = Literal["succeeded", "failed", "stopped"]


class GpuInfo(BaseModel):
    """One GPU as NVML reports it."""

    index: int
    name: str
    memory_mb: int


class AgentHardware(BaseModel):
    """What a machine is made of, as FGMachine registered it, and more."""

    hostname: str = ""
    os: str = ""
    cpu_model: str = ""
    cpu_count: int = 0
    memory_mb: int = 0
    gpus: list[GpuInfo] = Field(default_factory=list)
    python: str = ""


class GpuUsage(BaseModel):
    """One GPU's use at a sample, as NVML reports it."""

    index: int
    # Percent of the time a kernel ran over the last sample period (NVML's utilisation).
    utilization: float
    memory_used_mb: float
    memory_total_mb: float


class MachineUsage(BaseModel):
    """What the whole machine uses at a sample (MLBench's CPU/memory per worker)."""

    ts: datetime
    # Of the whole machine: 100 means every core busy.
    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float
    gpus: list[GpuUsage] = Field(default_factory=list)


class ExperimentUsage(BaseModel):
    """What one running experiment's whole process tree uses at a sample."""

    experiment_id: uuid.UUID
    attempt: int = 1
    # The rank this tree is in a multi-worker experiment (None for a single process): each
    # rank is sampled on its own, also when several run on one agent.
    rank: int | None = None
    ts: datetime
    # Summed over the tree: 100 means one core busy (so 350 is three and a half cores).
    cpu_percent: float
    rss_mb: float
    processes: int
    # Over the GPUs given to the run: their mean utilisation and the memory the tree holds.
    gpu_percent: float | None = None
    gpu_memory_mb: float | None = None


class AgentHeartbeat(Event):
    """An agent is alive: sent every few seconds on core NATS (stale ones are worthless)."""

    STREAM: ClassVar[str | None] = None
    type: Literal["agent.heartbeat"] = "agent.heartbeat"
    agent_id: str
    # A new id every time the agent process starts: tells a restarted agent from a live one.
    instance_id: uuid.UUID
    slots: int
    running: list[uuid.UUID] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    # Projects this agent runs with a command of its own (FGMachine projects.json).
    projects: list[str] = Field(default_factory=list)
    hardware: AgentHardware = Field(default_factory=AgentHardware)
    started_at: datetime | None = None
    # An address of this machine the other agents can reach (MASTER_ADDR of a multi-worker
    # experiment whose rank 0 runs here).
    address: str = ""
    # The machine's latest resource sample (None before the first one).
    usage: MachineUsage | None = None


class StagedInput(BaseModel):
    """An input fetched into ``inputs/<name>`` before the run started."""

    name: str
    url: str
    sha256: str
    size: int
    # True when the agent had it already and did not fetch it again.
    cached: bool = False


class OutputFile(BaseModel):
    """A file the run left under ``outputs/``, uploaded to the artifact store."""

    name: str
    size: int
    sha256: str


class ExperimentStarted(Event):
    """The agent started the experiment's process."""

    STREAM: ClassVar[str | None] = "AGENT"
    type: Literal["agent.experiment.started"] = "agent.experiment.started"
    experiment_id: uuid.UUID
    agent_id: str
    instance_id: uuid.UUID
    attempt: int = 1
    pid: int
    argv: list[str]
    workdir: str
    inputs: list[StagedInput] = Field(default_factory=list)
    # A multi-worker experiment (world_size > 1) is reported started once, by the scheduler,
    # when every rank runs; the fields above are then rank 0's.
    world_size: int = 1


class ExperimentFinished(Event):
    """The experiment's process ended, or could not start (``started`` is then false)."""

    STREAM: ClassVar[str | None] = "AGENT"
    type: Literal["agent.experiment.finished"] = "agent.experiment.finished"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int = 1
    status: ExperimentOutcome
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    started: bool = True
    started_at: datetime | None = None
    # How many log lines the run produced (sequence numbers 1..log_lines).
    log_lines: int = 0
    # Files under outputs/ uploaded when the run ended, and those that could not be, with why.
    outputs: list[OutputFile] = Field(default_factory=list)
    outputs_skipped: dict[str, str] = Field(default_factory=dict)
    # A multi-worker experiment (world_size > 1) is reported finished once, by the scheduler,
    # when every rank ended: failed (or stopped) as its first rank that did not succeed
    # (``failed_rank``; exit code, signal and reason are that rank's), succeeded when all did;
    # ``log_lines`` and ``outputs`` cover every rank (outputs of rank r > 0 under ``rank-<r>/``).
    world_size: int = 1
    failed_rank: int | None = None


class WorkerStarted(Event):
    """One rank of a multi-worker experiment started on an agent (for the scheduler, which
    reports the experiment started when all have). Rank 0's carries the rendezvous address it
    chose: ``master_addr`` (its agent's address) and ``master_port`` (a free port there)."""

    STREAM: ClassVar[str | None] = "AGENT"
    type: Literal["agent.worker.started"] = "agent.worker.started"
    experiment_id: uuid.UUID
    agent_id: str
    instance_id: uuid.UUID
    attempt: int = 1
    rank: int
    world_size: int
    pid: int
    argv: list[str]
    workdir: str
    inputs: list[StagedInput] = Field(default_factory=list)
    master_addr: str | None = None
    master_port: int | None = None


class WorkerFinished(Event):
    """One rank of a multi-worker experiment ended, or could not start (``started`` false)."""

    STREAM: ClassVar[str | None] = "AGENT"
    type: Literal["agent.worker.finished"] = "agent.worker.finished"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int = 1
    rank: int
    world_size: int
    status: ExperimentOutcome
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    started: bool = True
    started_at: datetime | None = None
    log_lines: int = 0
    outputs: list[OutputFile] = Field(default_factory=list)
    outputs_skipped: dict[str, str] = Field(default_factory=dict)


class LogLine(BaseModel):
    """One line of a process's output."""

    seq: int
    stream: Literal["stdout", "stderr"]
    ts: datetime
    line: str
    # The worker's rank in a multi-worker experiment (None for a single process). Ranks share
    # one sequence: rank r of N numbers its k-th line (from 0) k * N + r + 1.
    rank: int | None = None

    @model_serializer(mode="wrap")
    def _without_rank_of_a_single_process(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        # A single process's lines stay as they always were on the wire: no "rank": null.
        data: dict[str, Any] = handler(self)
        if data.get("rank", 0) is None:
            del data["rank"]
        return data


class LogLinesAppended(Event):
    """A batch of output lines, on ``agent.log.appended.<experiment_id>``."""

    STREAM: ClassVar[str | None] = "AGENT"
    ROUTE_FIELD: ClassVar[str | None] = "experiment_id"
    type: Literal["agent.log.appended"] = "agent.log.appended"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int = 1
    lines: list[LogLine]

    @classmethod
    def encode(
        cls,
        experiment_id: uuid.UUID,
        agent_id: str,
        attempt: int,
        lines: list[dict[str, Any]],
    ) -> EncodedEvent:
        """The batch in its wire form, from lines already shaped as ``LogLine``'s JSON
        (``seq``, ``stream``, ``ts`` as ISO 8601 text, ``line``, and ``rank`` for a worker)."""
        return cls.encode_with_items(
            "lines", lines, experiment_id=experiment_id, agent_id=agent_id, attempt=attempt
        )


class AgentLogLine(BaseModel):
    """One line of an agent's own log (its structlog output, as rendered)."""

    ts: datetime
    level: str
    line: str


class AgentLogAppended(Event):
    """A batch of the agent's own log lines, on ``agent.agentlog.appended.<agent_id>``.

    Best effort and bounded: an agent keeps at most a fixed number of unsent lines and says
    in ``dropped`` how many it had to let go since the previous batch.
    """

    STREAM: ClassVar[str | None] = "AGENT"
    ROUTE_FIELD: ClassVar[str | None] = "agent_id"
    type: Literal["agent.agentlog.appended"] = "agent.agentlog.appended"
    agent_id: str
    instance_id: uuid.UUID
    lines: list[AgentLogLine]
    dropped: int = 0


class MetricPoint(BaseModel):
    """One value of one metric: ``step`` when the program gave one, ``ts`` always."""

    name: str
    value: float
    step: int | None = None
    ts: datetime
    metadata: dict[str, Any] | None = None
    # MLBench: the value accumulates over the run (e.g. total time), rather than being a sample.
    cumulative: bool = False
    # The worker's rank in a multi-worker experiment (None for a single process).
    rank: int | None = None


class MetricsReported(Event):
    """A batch of metric points from a run's metrics file, on
    ``agent.metrics.reported.<experiment_id>``; ``scores`` are the run's ``_scores`` so far
    (from ``fleetlab.result``), ``skipped`` the malformed lines left out of this batch."""

    STREAM: ClassVar[str | None] = "AGENT"
    ROUTE_FIELD: ClassVar[str | None] = "experiment_id"
    type: Literal["agent.metrics.reported"] = "agent.metrics.reported"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int = 1
    points: list[MetricPoint] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
    skipped: int = 0

    @classmethod
    def encode(
        cls,
        experiment_id: uuid.UUID,
        agent_id: str,
        attempt: int,
        points: list[dict[str, Any]],
        scores: dict[str, float],
        skipped: int,
    ) -> EncodedEvent:
        """The batch in its wire form, from points already shaped as ``MetricPoint``'s JSON
        (``name``, ``value``, ``step``, ``ts`` as ISO 8601 text, and ``rank`` for a worker)."""
        return cls.encode_with_items(
            "points",
            points,
            experiment_id=experiment_id,
            agent_id=agent_id,
            attempt=attempt,
            scores=scores,
            skipped=skipped,
        )


class UsageSampled(Event):
    """Resource use every few seconds, on ``agent.usage.sampled.<agent_id>``: the machine's
    and that of every experiment running on it, in one message."""

    STREAM: ClassVar[str | None] = "AGENT"
    ROUTE_FIELD: ClassVar[str | None] = "agent_id"
    type: Literal["agent.usage.sampled"] = "agent.usage.sampled"
    agent_id: str
    machine: MachineUsage
    experiments: list[ExperimentUsage] = Field(default_factory=list)


class ResultsReported(Event):
    """JSON files of a run's results folder (FGMachine's), on
    ``agent.results.reported.<experiment_id>``: ``results`` merges the files new or changed
    since the previous report (``_scores``, ``_notes``, ``_charts``, fields of its own), to be
    merged into the experiment's results, newest wins; ``skipped`` counts malformed files."""

    STREAM: ClassVar[str | None] = "AGENT"
    ROUTE_FIELD: ClassVar[str | None] = "experiment_id"
    type: Literal["agent.results.reported"] = "agent.results.reported"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int = 1
    results: dict[str, Any] = Field(default_factory=dict)
    files: list[str] = Field(default_factory=list)
    skipped: int = 0
