"""FastAPI dependency aliases. Every dependency is ``async def``: a plain ``def`` one runs in
the thread pool, a hop between threads on every request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from fleetlab_api.state import State
from fleetlab_common.db import Conn


async def get_state(request: Request) -> State:
    state: State = request.app.state.fleetlab
    return state


StateDep = Annotated[State, Depends(get_state)]


async def get_conn(state: StateDep) -> AsyncIterator[Conn]:
    async with state.db().acquire() as conn:
        yield conn


ConnDep = Annotated[Conn, Depends(get_conn)]
