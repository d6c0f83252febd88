"""Resource use (MLBench's CPU/memory per worker): ``/api/v1/experiments/{id}/usage`` and
``/api/v1/agents/{id}/usage``.

Agents sample every few seconds; logstream stores the samples (run telemetry) and the API
reads them over request/reply, as it reads metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from faststream.nats import NatsBroker
from pydantic import BaseModel, Field

from fleetlab_api.agents.endpoints import get_agent
from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import ApiError, InvalidError
from fleetlab_api.experiments import service as experiments
from fleetlab_api.logs.service import ask
from fleetlab_common.events import Rpc
from fleetlab_common.log import get_logger

log = get_logger(__name__)

router = APIRouter(tags=["usage"])

Since = Annotated[
    datetime | None,
    Query(description="Only samples taken at or after this time (ISO 8601)."),
]
Points = Annotated[
    int,
    Query(
        ge=0,
        le=2000,
        description="At most this many samples: the range cut into equal buckets, each the "
        "mean CPU/GPU % and the peak memory of its samples (of an experiment, per agent and "
        "rank); 0 for every sample.",
    ),
]


class GpuSample(BaseModel):
    index: int
    utilization: float
    memory_used_mb: float
    memory_total_mb: float


class ExperimentUsageSample(BaseModel):
    """The experiment's whole process tree at one time (100 % CPU = one core busy); of a
    multi-worker experiment, one rank's tree (its samples are one series per rank: add the
    ranks up for the experiment's whole use)."""

    ts: datetime
    attempt: int
    agent_id: str = Field(description="The agent the tree ran on.")
    rank: int | None = Field(
        default=None, description="The worker's rank in a multi-worker experiment, else null."
    )
    cpu_percent: float
    rss_mb: float
    processes: int
    gpu_percent: float | None
    gpu_memory_mb: float | None


class AgentUsageSample(BaseModel):
    """The whole machine at one time (100 % CPU = every core busy)."""

    ts: datetime
    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float
    gpus: list[GpuSample]


class ExperimentUsage(BaseModel):
    experiment_id: str
    samples: list[ExperimentUsageSample]
    # How many samples the range holds (more than ``samples`` when downsampled).
    total: int
    downsampled: bool


class AgentUsage(BaseModel):
    agent_id: str
    samples: list[AgentUsageSample]
    total: int
    downsampled: bool


def _utc(since: datetime | None) -> datetime | None:
    """``since`` in UTC (a time without a zone is taken as UTC)."""
    if since is None:
        return None
    try:
        return (since if since.tzinfo else since.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise InvalidError("since is out of range", {"since": "out of range"}) from None


async def read_usage(
    broker: NatsBroker,
    subject: dict[str, Any],
    since: datetime | None,
    points: int,
    timeout_s: float,
) -> tuple[list[dict[str, Any]], int, bool]:
    """Samples of an experiment or an agent (``subject``), every page when ``points`` is 0."""
    query: dict[str, Any] = {
        **subject,
        "since": since.isoformat() if (since := _utc(since)) else None,
        "points": points,
    }
    samples: list[dict[str, Any]] = []
    while True:
        page = await ask(broker, Rpc.USAGE, query, timeout_s * 4)
        if not isinstance(page, dict) or "samples" not in page:
            raise ApiError(503, "the usage store gave an unexpected answer")
        samples += page["samples"]
        if page.get("next_offset") is None:
            return samples, int(page["total"]), bool(page.get("downsampled"))
        query["offset"] = page["next_offset"]


async def latest_by_agent(
    broker: NatsBroker, agent_ids: list[str], timeout_s: float
) -> dict[str, Any]:
    """The newest machine sample of each agent; empty when logstream does not answer (an
    agents list without usage beats no list)."""
    if not agent_ids:
        return {}
    try:
        answer = await ask(broker, Rpc.USAGE_LATEST, {"agent_ids": agent_ids}, timeout_s)
    except ApiError as exc:
        log.warning("usage.latest_unavailable", error=exc.message)
        return {}
    agents = answer.get("agents") if isinstance(answer, dict) else None
    return agents if isinstance(agents, dict) else {}


@router.get("/api/v1/experiments/{ref}/usage", response_model=ExperimentUsage)
async def experiment_usage(
    ref: str, conn: ConnDep, state: StateDep, since: Since = None, points: Points = 500
) -> ExperimentUsage:
    """CPU %, RSS, processes and GPU use of the experiment's process tree over time."""
    experiment = await experiments.get(conn, ref)
    samples, total, downsampled = await read_usage(
        state.broker,
        {"experiment_id": str(experiment.id)},
        since,
        points,
        state.settings.rpc_timeout_s,
    )
    return ExperimentUsage(
        experiment_id=str(experiment.id),
        samples=[ExperimentUsageSample.model_validate(s) for s in samples],
        total=total,
        downsampled=downsampled,
    )


@router.get("/api/v1/agents/{agent_id}/usage", response_model=AgentUsage)
async def agent_usage(
    agent_id: str, state: StateDep, since: Since = None, points: Points = 500
) -> AgentUsage:
    """CPU %, memory and GPU use of the agent's machine over time."""
    agent = await get_agent(agent_id, state)  # 404 when the scheduler does not know it
    samples, total, downsampled = await read_usage(
        state.broker, {"agent_id": agent.id}, since, points, state.settings.rpc_timeout_s
    )
    return AgentUsage(
        agent_id=agent.id,
        samples=[AgentUsageSample.model_validate(s) for s in samples],
        total=total,
        downsampled=downsampled,
    )
