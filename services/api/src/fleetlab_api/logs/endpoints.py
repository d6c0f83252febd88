"""Experiments' logs (whole, and live over Server-Sent Events or a WebSocket) and agents' own
logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.background import BackgroundTask

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import ApiError, InvalidError
from fleetlab_api.experiments import service as experiments
from fleetlab_api.logs import service
from fleetlab_api.logs.schemas import DEFAULT_HEAD, DEFAULT_TAIL, AgentLogPage
from fleetlab_api.logs.service import Item, LogFollower
from fleetlab_api.state import State
from fleetlab_common.events import Rpc

router = APIRouter(tags=["logs"])

StreamName = Literal["stdout", "stderr"]
Head = Annotated[int, Query(ge=0, le=100_000, description="First lines a late viewer gets.")]
Tail = Annotated[int, Query(ge=0, le=100_000, description="Last lines a late viewer gets.")]


@router.get("/api/v1/experiments/{ref}/logs", response_class=PlainTextResponse)
async def get_logs(
    ref: str,
    conn: ConnDep,
    state: StateDep,
    stream: StreamName | None = None,
    from_seq: Annotated[int, Query(ge=1, le=2**31 - 1)] = 1,
    to_seq: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    download: bool = False,
) -> PlainTextResponse:
    """The output of the latest attempt as text, every line in order."""
    experiment = await experiments.get(conn, ref)
    lines = await service.read_lines(
        state.broker,
        experiment,
        stream=stream,
        from_seq=from_seq,
        to_seq=to_seq,
        timeout_s=state.settings.rpc_timeout_s,
    )
    # A multi-worker run: each line says which rank wrote it (lines stored before the agent
    # sent ranks take it from their number and the project's workers).
    world = await experiments.world_size(conn, experiment)
    if world > 1 or any("rank" in ln for ln in lines):
        text = "".join(
            f"[rank {ln.get('rank', experiments.rank_of(ln['seq'], world))}] {ln['line']}\n"
            for ln in lines
        )
    else:
        text = "".join(f"{ln['line']}\n" for ln in lines)
    headers = {"X-Log-Lines": str(len(lines))}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{experiment.id}.log"'
    return PlainTextResponse(text, headers=headers)


def _sse(item: Item) -> bytes:
    if item.kind == "lines":
        # Each line's JSON as the agent sent it, written by orjson: a tenth of what json.dumps
        # cost per line, which was the largest part of what a live line cost the API.
        encode = orjson.dumps
        return b"".join(
            [b"id: %d\nevent: line\ndata: %s\n\n" % (ln["seq"], encode(ln)) for ln in item.lines]
        )
    if item.kind == "skipped":
        assert item.skipped is not None
        return f"event: skipped\ndata: {item.skipped.model_dump_json()}\n\n".encode()
    if item.kind == "end":
        assert item.end is not None
        return f"event: end\ndata: {item.end.model_dump_json()}\n\n".encode()
    return b": keepalive\n\n"


def _resume_from(from_seq: int | None, last_event_id: str | None) -> int | None:
    if from_seq is not None or not last_event_id:
        return from_seq
    try:
        return int(last_event_id) + 1
    except ValueError:
        raise InvalidError(
            "invalid Last-Event-ID", {"last-event-id": "not a line's sequence number"}
        ) from None


@router.get(
    "/api/v1/experiments/{ref}/logs/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_logs(
    ref: str,
    state: StateDep,
    stream: StreamName | None = None,
    from_seq: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    head: Head = DEFAULT_HEAD,
    tail: Tail = DEFAULT_TAIL,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """The log live, as Server-Sent Events.

    Events: ``line`` (``id`` = ``seq``; data ``{seq, stream, ts, line}``), ``skipped`` (a late
    viewer of a log longer than ``head + tail`` lines: ``{skipped, from_seq, to_seq}``
    between the first ``head`` and the last ``tail`` lines), and ``end`` (``{status,
    exit_code, signal, reason, log_lines}``, the last event). ``?from_seq=K``, or a
    reconnecting browser's ``Last-Event-ID``, resumes at line K exactly: no gap, no duplicate.
    """
    # A database connection only for the lookup: a request's own (ConnDep) would be held
    # for as long as the viewer watches, and ten viewers would hold the whole pool.
    async with state.db().acquire() as conn:
        experiment = await experiments.get(conn, ref)
    follower = LogFollower(
        state,
        experiment,
        from_seq=_resume_from(from_seq, last_event_id),
        head=head,
        tail=tail,
        stream=stream,
    )
    await follower.__aenter__()
    try:
        # The first step runs now, so an unreachable logstream is a 503, not a broken stream.
        attach = follower.attach()
        first = await anext(attach, None)
    except BaseException:
        await follower.__aexit__()
        raise

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            if first is not None:
                yield _sse(first)
                async for item in attach:
                    yield _sse(item)
            async for item in follower.follow():
                yield _sse(item)
        finally:
            await follower.__aexit__()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Also when the body never started (the viewer hung up at once): then the generator's
        # own cleanup never runs. Giving back twice is harmless.
        background=BackgroundTask(follower.__aexit__),
    )


def _ws_message(item: Item) -> dict[str, Any]:
    if item.kind == "lines":
        return {"type": "lines", "lines": item.lines}
    if item.kind == "skipped":
        assert item.skipped is not None
        return {"type": "skipped", **item.skipped.model_dump()}
    if item.kind == "end":
        assert item.end is not None
        return {"type": "end", **item.end.model_dump()}
    return {"type": "keepalive"}


@router.websocket("/api/v1/experiments/{ref}/logs/ws")
async def logs_websocket(
    websocket: WebSocket,
    ref: str,
    stream: StreamName | None = None,
    from_seq: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    head: Head = DEFAULT_HEAD,
    tail: Tail = DEFAULT_TAIL,
) -> None:
    """The log live for the dashboard: JSON messages ``{"type": "lines", "lines": [...]}``,
    ``{"type": "skipped", ...}``, ``{"type": "end", ...}`` (then the socket closes), with the
    same ``head``/``tail``/``from_seq`` rules as the event stream. An error closes the socket
    with code 1011 (4404 for an unknown experiment) and the reason."""
    state: State = websocket.app.state.fleetlab
    await websocket.accept()
    try:
        async with state.db().acquire() as conn:
            experiment = await experiments.get(conn, ref)
        async with LogFollower(
            state, experiment, from_seq=from_seq, head=head, tail=tail, stream=stream
        ) as follower:
            async for item in follower.attach():
                await websocket.send_text(orjson.dumps(_ws_message(item)).decode())
            async for item in follower.follow():
                await websocket.send_text(orjson.dumps(_ws_message(item)).decode())
        await websocket.close()
    except WebSocketDisconnect:
        return
    except ApiError as exc:
        await websocket.close(code=4404 if exc.status == 404 else 1011, reason=exc.message[:120])


@router.get("/api/v1/agents/{agent_id}/logs", response_model=AgentLogPage)
async def get_agent_logs(
    agent_id: str,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> AgentLogPage:
    """The agent's own log (its structured log lines), newest ``limit`` lines, oldest first;
    ``before_id`` pages back. Logstream keeps a bounded number of lines per agent."""
    query = {"agent_id": agent_id, "limit": limit, "before_id": before_id}
    page = await service.ask(state.broker, Rpc.AGENT_LOG, query, state.settings.rpc_timeout_s)
    if not isinstance(page, dict) or "lines" not in page:
        raise ApiError(503, "the log service gave an unexpected answer")
    return AgentLogPage(agent_id=agent_id, **page)
