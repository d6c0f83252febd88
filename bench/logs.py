"""Log benchmark: one experiment printing as fast as it can, through `fleetlab up`.

Measures lines/s stored end to end (from the program's first line to the moment logstream
holds the last), the latency of each line at a live viewer on the SSE route (the program
stamps each line with the time it printed it), and lines lost (must be 0).

    .venv/bin/python bench/logs.py [--lines 1000000]

Writes bench/results/logs.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats

sys.path.insert(0, str(Path(__file__).parent))
from _stack import percentile, record, stack

PROGRAM = """
import sys, time
w = sys.stdout.write
t = time.time
for i in range(1, {n} + 1):
    w(f"{{t():.6f}} line {{i}}\\n")
"""


# A run printing at a steady rate (lines/s, for `seconds`), in bursts every 10 ms.
PACED = """
import sys, time
w, t = sys.stdout.write, time.time
rate, seconds = {rate}, {seconds}
per_tick = rate // 100
start = t()
i = 0
for tick in range(seconds * 100):
    for _ in range(per_tick):
        i += 1
        w(f"{{t():.6f}} line {{i}}\\n")
    sys.stdout.flush()
    delay = start + (tick + 1) / 100 - t()
    if delay > 0:
        time.sleep(delay)
"""


async def stored_all(nats_url: str, experiment_id: str, n: int, timeout: float) -> float:
    """When logstream holds ``n`` lines of the run (asked with min_count, so no polling gap)."""
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            query = {"experiment_id": experiment_id, "min_count": n, "wait_s": 10, "limit": 1}
            reply = await nc.request("rpc.logstream.lines", json.dumps(query).encode(), timeout=15)
            if json.loads(reply.data)["stored"] >= n:
                return time.time()
        raise RuntimeError("the log never became complete")
    finally:
        await nc.close()


# A line event as the API writes it, with the time the program printed the line (the first
# word of its text). The viewer reads the HTTP response off a plain socket (chunked transfer
# undone by hand) and finds the events with regular expressions over each read: a viewer
# parsing every event's JSON through an HTTP library in Python cost more CPU than the API
# spent sending them, on the same two cores. A browser's EventSource is native code. Every
# line's number is checked (lost, duplicated); the latency is taken on every 10th line.
_ID = re.compile(rb"^id: (\d+)$", re.MULTILINE)
_LINE = re.compile(rb'id: (\d+0)\nevent: line\ndata: [^\n]*?"line":"(\d+\.\d+) ')
_END = b"event: end\ndata: "


async def _sse_body(url: str, path: str) -> AsyncIterator[bytes]:
    """The body of ``GET path`` (an SSE stream, chunked), read by hand."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
        writer.write(request.encode() + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"the viewer got {head.decode(errors='replace')}")
        if b"transfer-encoding: chunked" not in head.lower():
            raise RuntimeError("the viewer expected a chunked response")
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size + 2)
            yield chunk[:-2]
    finally:
        writer.close()


async def view(url: str, experiment_id: str, n: int) -> dict[str, Any]:
    """Follow the run on the SSE route from line 1; note each line's latency."""
    latencies: list[float] = []
    seqs: set[int] = set()
    duplicates = 0
    end: dict[str, Any] | None = None
    buf = b""
    path = f"/api/v1/experiments/{experiment_id}/logs/stream?from_seq=1"
    async for chunk in _sse_body(url, path):
        buf += chunk
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            continue
        block, buf = buf[: cut + 2], buf[cut + 2 :]
        now = time.time()
        got = [int(x) for x in _ID.findall(block)]
        before = len(seqs)
        seqs.update(got)
        duplicates += len(got) - (len(seqs) - before)
        latencies += [now - float(m[2]) for m in _LINE.finditer(block)]
        at = block.find(_END)
        if at >= 0:
            start = at + len(_END)
            end = json.loads(block[start : block.index(b"\n", start)])
            break
    return {"latencies": latencies, "seqs": seqs, "duplicates": duplicates, "end": end}


async def paced(
    url: str, nats_url: str, http: httpx.AsyncClient, rate: int, seconds: int
) -> dict[str, Any]:
    """A viewer's line latency for a run printing ``rate`` lines/s: below saturation."""
    code = Path(tempfile.mkdtemp()) / "paced.py"
    code.write_text(textwrap.dedent(PACED.format(rate=rate, seconds=seconds)))
    r = await http.post(
        "/api/v1/projects",
        json={"name": f"paced-{rate}", "command": [sys.executable, str(code)], "schema": {}},
    )
    r.raise_for_status()
    n = rate // 100 * 100 * seconds
    eid = (await http.post("/api/v1/experiments", json={"project": f"paced-{rate}"})).json()["id"]
    viewer = asyncio.create_task(view(url, eid, n))
    await stored_all(nats_url, eid, n, timeout=600)
    seen = await asyncio.wait_for(viewer, 600)
    lat = seen["latencies"]
    return {
        "rate": rate,
        "lines": n,
        "viewer_p50_ms": round(percentile(lat, 50) * 1000, 1),
        "viewer_p99_ms": round(percentile(lat, 99) * 1000, 1),
        "viewer_max_ms": round(max(lat) * 1000, 1),
        "lines_lost": n - len(seen["seqs"]),
        "viewer_duplicates": seen["duplicates"],
    }


async def saturated(url: str, nats_url: str, http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    """One run printing ``n`` lines as fast as Python can, one live viewer from line 1."""
    code = Path(tempfile.mkdtemp()) / "spam.py"
    code.write_text(textwrap.dedent(PROGRAM.format(n=n)))
    r = await http.post(
        "/api/v1/projects",
        json={"name": "spam", "command": [sys.executable, str(code)], "schema": {}},
    )
    r.raise_for_status()
    experiment = (await http.post("/api/v1/experiments", json={"project": "spam"})).json()
    eid = experiment["id"]
    viewer = asyncio.create_task(view(url, eid, n))
    stored_at = await stored_all(nats_url, eid, n, timeout=600)
    seen = await asyncio.wait_for(viewer, 600)
    first = (await http.get(f"/api/v1/experiments/{eid}/logs", params={"to_seq": 1})).text
    record_ = (await http.get(f"/api/v1/experiments/{eid}")).json()
    started = float(first.split(" ", 1)[0])
    took = stored_at - started
    lat = seen["latencies"]
    return {
        # The machine is shared: its load just after measuring (1, 5, 15 minutes) says how much.
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "lines": n,
        "log_lines_reported": record_["log_lines"],
        "stored_in_s": round(took, 2),
        "lines_per_s_stored": round(n / took),
        "viewer_p50_ms": round(percentile(lat, 50) * 1000, 1),
        "viewer_p99_ms": round(percentile(lat, 99) * 1000, 1),
        "viewer_max_ms": round(max(lat) * 1000, 1),
        "viewer_lines": len(seen["seqs"]),
        "viewer_duplicates": seen["duplicates"],
        "lines_lost": n - len(seen["seqs"]),
        "end": seen["end"],
    }


async def bench(n: int) -> dict[str, Any]:
    with stack() as (url, info):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            # The steady runs first, on a quiet stack: after the saturating run, logstream
            # archives its million lines for seconds, and that would be measured with them.
            # A first short run warms the path up (first process start, first chunk stored).
            await paced(url, info["nats_url"], http, 1_000, 1)
            steady = await paced(url, info["nats_url"], http, 20_000, 5)
            steady_100k = await paced(url, info["nats_url"], http, 100_000, 5)
            result = await saturated(url, info["nats_url"], http, n)
    # The same run with the agent's line rate bound off, on a stack of its own.
    with stack({"FLEETLAB_AGENT__LOG_LINES_PER_S": "0"}) as (url, info):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await paced(url, info["nats_url"], http, 1_000, 1)
            unbounded = await saturated(url, info["nats_url"], http, n)
    return {**result, "paced": steady, "paced_100k": steady_100k, "unbounded": unbounded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    r = asyncio.run(bench(args.lines))
    print(json.dumps(r, indent=2))
    n = r["lines"]
    stored = f"{r['lines_per_s_stored']:,} lines/s ({n:,} in {r['stored_in_s']} s)"
    latency = f"p50 {r['viewer_p50_ms']} ms, p99 {r['viewer_p99_ms']} ms"
    lost = f"{r['lines_lost']} / {n - r['log_lines_reported']}, duplicates {r['viewer_duplicates']}"
    p = r["paced"]
    u = r["unbounded"]
    table = "\n".join(
        [
            "## Logs",
            "",
            f"`bench/logs.py --lines {n}`: one experiment printing {n:,} lines as fast as Python",
            "can, through `fleetlab up` (embedded NATS and PostgreSQL, every service a process,",
            "all on this machine), one live viewer on the SSE route from line 1.",
            "",
            "| benchmark | result | goal |",
            "| --- | --- | --- |",
            f"| lines stored end to end | {stored} | ≥ 100,000 lines/s |",
            f"| line latency at a live viewer | {latency} | p99 ≤ 250 ms |",
            f"| lines lost (viewer / store) | {lost} | 0 |",
            f"| the same run with no line rate bound (`FLEETLAB_AGENT__LOG_LINES_PER_S=0`) | "
            f"stored {u['lines_per_s_stored']:,} lines/s; viewer p50 {u['viewer_p50_ms']} ms, "
            f"p99 {u['viewer_p99_ms']} ms; lost {u['lines_lost']} | — |",
            *(
                f"| line latency at a live viewer, a run printing {q['rate']:,} lines/s "
                f"({q['lines']:,} lines) | p50 {q['viewer_p50_ms']} ms, "
                f"p99 {q['viewer_p99_ms']} ms, lost {q['lines_lost']} | p99 ≤ 250 ms |"
                for q in (p, r["paced_100k"])
            ),
            "",
            "The first rows are measured at saturation: the program prints as fast as Python",
            "can while the agent, NATS, PostgreSQL, logstream, the API and the viewer share the",
            "same 2 cores; each line's latency runs from the program's clock when it formatted",
            "the line to the viewer reading it. The agent reads a run's output at most 120,000",
            "lines a second by default (`FLEETLAB_AGENT__LOG_LINES_PER_S`; the program waits on",
            "its prints, nothing is dropped). With no bound the program prints over 200,000",
            "lines a second: storage keeps up, but the path to the viewer (about 2.5 µs of CPU",
            "per line in the API and the viewer, on cores the other stages fill) carries less,",
            "so the viewer falls further behind for as long as the run prints (the row with",
            "no bound). The viewer reads the HTTP response off a plain socket and",
            "finds the events with one regular expression (as a browser's native EventSource",
            "would cost the machine little), so its own parsing does not starve the services",
            "it measures. The last two rows are runs printing at a steady rate in bursts every",
            "10 ms, with the same single viewer, measured first, on a quiet stack (after a",
            "short warm-up run). Lines travel in batches of up to 2,000 (or 50 ms), and",
            "logstream stores a batch as one row. Load average just after: "
            f"{' / '.join(str(x) for x in r['load_average_after'])}.",
        ]
    )
    record("logs", r, table)


if __name__ == "__main__":
    main()
