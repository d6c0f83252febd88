"""A run printing 1,000,000 lines as fast as it can, through a real agent, NATS and logstream:
every line is in the stored log, in order, once, and in the archive written when it ended."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from fleetlab_agent.service import Agent
from fleetlab_common.broker import publish_event
from fleetlab_common.db.service import DbService
from fleetlab_common.events import ExperimentAssigned, Rpc
from fleetlab_common.runspec import RunSpec
from fleetlab_logstream.state import State

from .test_output_end_to_end import agent, client, logstream, own_nats

__all__ = ["agent", "client", "logstream", "own_nats"]

LINES = 1_000_000


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_run_printing_a_million_lines_has_all_of_them_in_the_stored_log(
    client: NatsBroker, agent: Agent, logstream: tuple[DbService, State], tmp_path: Path
) -> None:
    program = tmp_path / "million.py"
    program.write_text(
        textwrap.dedent(
            f"""
            import sys
            w = sys.stdout.write
            for i in range(1, {LINES} + 1):
                w(f"line {{i}} of a million\\n")
            """
        )
    )
    eid = uuid.uuid4()
    js = client.connection.jetstream()
    sub = await js.subscribe("agent.experiment.finished", ordered_consumer=True)
    began = time.monotonic()
    await publish_event(
        client,
        ExperimentAssigned(
            experiment_id=eid,
            agent_id=agent.name,
            project="p",
            run=RunSpec(command=[sys.executable, str(program)]),
        ),
    )
    try:
        async with asyncio.timeout(300):
            while True:
                end = json.loads((await sub.next_msg(timeout=300)).data)
                if end["experiment_id"] == str(eid):
                    break
    finally:
        await sub.unsubscribe()
    assert end["status"] == "succeeded", end
    assert end["log_lines"] == LINES

    ls = logstream[1].get()

    async def stored() -> int:
        async with ls.pool.acquire() as conn:
            value = await conn.fetchval("SELECT stored FROM runs WHERE experiment_id = $1", eid)
        return int(value or 0)

    async with asyncio.timeout(300):
        while await stored() < LINES:
            await asyncio.sleep(0.2)
    print(f"{LINES:,} lines stored in {time.monotonic() - began:.1f} s")

    # Read the whole stored log back, page by page, checking each line as it comes.
    expected = 1
    next_seq: int | None = 1
    while next_seq is not None:
        query = {
            "experiment_id": str(eid),
            "from_seq": next_seq,
            "limit": 50_000,
        }
        reply = await client.request(query, Rpc.LOG_LINES, timeout=30)
        page: dict[str, Any] = await reply.decode()  # type: ignore[assignment]
        for line in page["lines"]:
            assert (line["seq"], line["line"]) == (expected, f"line {expected} of a million")
            expected += 1
        next_seq = page["next_seq"]
    assert expected - 1 == LINES

    # The archive (the full log in the artifact store) holds them all too.
    async with asyncio.timeout(120):
        while True:
            async with ls.pool.acquire() as conn:
                run = await conn.fetchrow(
                    "SELECT stored, archive_key, archive_complete FROM runs"
                    " WHERE experiment_id = $1",
                    eid,
                )
            if run is not None and run["archive_key"]:
                break
            await asyncio.sleep(0.2)
    assert run["stored"] == LINES
    assert run["archive_complete"] is True
    assert ls.store is not None
    path = tmp_path / "archive.jsonl"
    await ls.store.get_file(run["archive_key"], path)
    with path.open(encoding="utf-8") as f:
        count = 0
        for count, raw in enumerate(f, start=1):
            if count in (1, LINES // 2, LINES):
                assert json.loads(raw)["line"] == f"line {count} of a million"
    assert count == LINES
