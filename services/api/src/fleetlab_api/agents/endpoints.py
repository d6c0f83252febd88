"""``/api/v1/agents``: the scheduler owns the registry; the API asks it over NATS."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict

from fleetlab_api.deps import StateDep
from fleetlab_api.errors import ApiError, ConflictError, NotFoundError
from fleetlab_api.state import State
from fleetlab_common.events import Rpc

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])


class Agent(BaseModel):
    """One agent: hardware, labels, capacity and use, what it runs, whether it is online."""

    id: str
    hostname: str
    status: str
    online: bool
    draining: bool
    slots: int
    busy: int
    labels: list[str]
    hardware: dict[str, Any]
    running: list[str]
    projects: list[str] = []
    first_seen: str
    last_seen: str
    # The machine's latest resource sample (CPU %, memory, GPUs), when there is one.
    usage: dict[str, Any] | None = None


class DrainRequest(BaseModel):
    """``POST /api/v1/agents/{id}/drain``: ``draining: false`` puts the agent back to work."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"draining": True}]})

    draining: bool = True


async def ask(state: State, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request to the scheduler; 503 when it does not answer."""
    try:
        reply = await state.broker.request(body, subject, timeout=state.settings.rpc_timeout_s)
        answer = await reply.decode()
    except Exception:  # a timeout or no responder: the scheduler is away
        raise ApiError(503, "the scheduler did not answer") from None
    if not isinstance(answer, dict):
        raise ApiError(503, "the scheduler gave an unexpected answer")
    return answer


async def _all(state: State) -> list[Agent]:
    answer = await ask(state, Rpc.AGENTS, {})
    agents = [Agent.model_validate(a) for a in answer.get("agents", [])]
    # Imported here: fleetlab_api.usage imports this module.
    from fleetlab_api.usage import latest_by_agent

    latest = await latest_by_agent(
        state.broker, [a.id for a in agents], state.settings.rpc_timeout_s
    )
    for agent in agents:
        agent.usage = latest.get(agent.id)
    return agents


@router.get("", response_model=list[Agent])
async def list_agents(state: StateDep) -> list[Agent]:
    """Every agent the scheduler knows, online or not."""
    return await _all(state)


@router.get("/{agent_id}", response_model=Agent)
async def get_agent(agent_id: str, state: StateDep) -> Agent:
    """One agent."""
    for agent in await _all(state):
        if agent.id == agent_id:
            return agent
    raise NotFoundError("agent", agent_id)


@router.post("/{agent_id}/drain", response_model=Agent)
async def drain_agent(agent_id: str, state: StateDep, body: DrainRequest | None = None) -> Agent:
    """Stop giving the agent new work (what it runs goes on), or resume."""
    draining = (body or DrainRequest()).draining
    answer = await ask(state, Rpc.AGENT_DRAIN, {"agent_id": agent_id, "draining": draining})
    if not answer.get("found"):
        raise NotFoundError("agent", agent_id)
    return await get_agent(agent_id, state)


@router.delete("/{agent_id}", status_code=204)
async def remove_agent(agent_id: str, state: StateDep) -> Response:
    """Forget an offline agent. An online one is refused: drain it and stop it first."""
    answer = await ask(state, Rpc.AGENT_REMOVE, {"agent_id": agent_id})
    result = answer.get("result")
    if result == "unknown":
        raise NotFoundError("agent", agent_id)
    if result == "online":
        raise ConflictError(
            f"agent {agent_id!r} is online: drain it and stop it before removing it",
            {"status": "online"},
        )
    return Response(status_code=204)
