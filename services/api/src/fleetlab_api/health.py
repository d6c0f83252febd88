"""``GET /api/v1/health``: the whole system, component by component."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fleetlab_api.deps import StateDep
from fleetlab_api.state import State
from fleetlab_common.db.pool import ping
from fleetlab_common.events import Rpc

router = APIRouter(tags=["health"])

SERVICES = ("scheduler", "logstream", "webhooks")


async def _ask(state: State, subject: str) -> dict[str, Any] | None:
    try:
        reply = await state.broker.request(
            {}, subject, timeout=min(state.settings.rpc_timeout_s, 2)
        )
        body = await reply.decode()
    except Exception:  # no answer is the answer: that part is down
        return None
    return body if isinstance(body, dict) else None


async def system_health(state: State) -> dict[str, str]:
    """``ok`` or what is wrong, for NATS, Postgres, each service and the agents."""
    nats_ok = await state.broker.ping(1.0)
    components: dict[str, str] = {
        "nats": "ok" if nats_ok else "down",
        "postgres": "ok" if state.pool is not None and await ping(state.pool) else "down",
        "api": "ok",
        "artifacts": "ok" if state.store is not None and await state.store.ping() else "down",
    }
    if not nats_ok:
        for name in (*SERVICES, "agents"):
            components[name] = "unknown: NATS is down"
        return components
    replies = await asyncio.gather(
        *(_ask(state, Rpc.health(s)) for s in SERVICES), _ask(state, Rpc.AGENTS)
    )
    for name, reply in zip(SERVICES, replies[:-1], strict=True):
        if reply is None:
            components[name] = "down: no answer"
        elif reply.get("status") != "ok":
            failing = [k for k, v in reply.get("components", {}).items() if v != "ok"]
            components[name] = "failing: " + ", ".join(failing)
        else:
            components[name] = "ok"
    agents = replies[-1]
    if agents is None:
        components["agents"] = "unknown: the scheduler did not answer"
    elif not isinstance(agents.get("online"), int) or agents["online"] < 1:
        components["agents"] = "down: no agent online"
    else:
        components["agents"] = "ok"
    return components


@router.get("/api/v1/health")
async def health(state: StateDep) -> JSONResponse:
    """200 ``{"status": "ok", "components": {...}}`` only when every part is up; else 503
    naming the failing parts."""
    components = await system_health(state)
    failing = sorted(k for k, v in components.items() if v != "ok")
    body: dict[str, Any] = {"status": "ok" if not failing else "fail", "components": components}
    if failing:
        body["failing"] = failing
    return JSONResponse(body, status_code=200 if not failing else 503)


@router.get("/healthz")
async def healthz(state: StateDep) -> JSONResponse:
    """This process alone: NATS and Postgres reachable."""
    nats_ok = await state.broker.ping(1.0)
    db_ok = state.pool is not None and await ping(state.pool)
    ok = nats_ok and db_ok
    components = {"nats": "ok" if nats_ok else "down", "postgres": "ok" if db_ok else "down"}
    return JSONResponse(
        {"status": "ok" if ok else "fail", "components": components}, 200 if ok else 503
    )
