"""The agent's content caches (inputs and code snapshots) stay under one size bound: the least
recently used entries go after a download, a hit makes an entry recent again, and nothing a
run is being staged with is taken from under it. Real files, a real HTTP server, real NATS."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.server
import io
import json
import os
import sys
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from fleetlab_agent.inputs import CacheBound, InputCache
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import make_broker
from fleetlab_common.events import (
    ExperimentAssigned,
    ExperimentFinished,
    ExperimentStarted,
    StagedInput,
)
from fleetlab_common.runspec import Input, RunSpec

MB = 1024 * 1024


def blob(name: str, size: int = MB) -> bytes:
    """``size`` bytes that do not compress (a gzip of them is as big)."""
    seed = hashlib.sha256(name.encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


class Served(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}
    # Paths whose last quarter waits for the event (a download caught in the middle).
    held: dict[str, threading.Event] = {}

    def do_GET(self) -> None:
        Served.hits[self.path] = Served.hits.get(self.path, 0) + 1
        data = Served.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        gate = Served.held.get(self.path)
        if gate is None:
            self.wfile.write(data)
            return
        most = len(data) * 3 // 4
        self.wfile.write(data[:most])
        self.wfile.flush()
        gate.wait(30)
        self.wfile.write(data[most:])

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Served)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def serve(name: str, data: bytes) -> str:
    path = f"/{uuid.uuid4().hex}/{name}"
    Served.files[path] = data
    return path


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def kept(cache: InputCache, server: str, paths: list[str]) -> list[str]:
    """Which of ``paths`` the cache holds (by the file name at the end of each)."""
    return [
        p.rsplit("/", 1)[-1]
        for p in paths
        if (cache.root / hashlib.sha256(f"{server}{p}".encode()).hexdigest()).exists()
    ]


async def test_past_the_bound_the_least_recently_used_input_goes_and_a_hit_counts_as_use(
    tmp_path: Path, server: str, client: httpx.AsyncClient
) -> None:
    cache = InputCache(tmp_path / "cache", 10 * MB, CacheBound(int(2.5 * MB)))
    data = {name: blob(name) for name in ("a", "b", "c")}
    paths = {name: serve(name, content) for name, content in data.items()}

    async def stage(name: str, run: str) -> bool:
        staged = await cache.stage(
            client, Input(name=name, url=f"{server}{paths[name]}"), tmp_path / run / "inputs"
        )
        assert staged.sha256 == hashlib.sha256(data[name]).hexdigest()
        return staged.cached

    assert [await stage("a", "r1"), await stage("b", "r2")] == [False, False]
    assert await stage("a", "r3")  # a hit: "a" is now the most recently used
    assert not await stage("c", "r4")  # 3 MB > 2.5 MB: the least recently used goes
    order = [paths[n] for n in ("a", "b", "c")]
    assert kept(cache, server, order) == ["a", "c"]
    assert Served.hits[paths["a"]] == 1

    # "b" is fetched again when a run needs it; now "a" is the oldest use.
    assert not await stage("b", "r5")
    assert Served.hits[paths["b"]] == 2
    assert kept(cache, server, order) == ["b", "c"]
    assert sum(f.stat().st_size for f in cache.root.iterdir()) <= 2.5 * MB
    # Runs staged before keep their inputs: hard links outlive the cache's entry.
    for run, name in (("r1", "a"), ("r2", "b"), ("r3", "a")):
        assert (tmp_path / run / "inputs" / name).read_bytes() == data[name]


async def test_an_input_being_downloaded_and_one_over_the_bound_are_kept_for_their_runs(
    tmp_path: Path, server: str, client: httpx.AsyncClient
) -> None:
    bound = CacheBound(int(1.5 * MB))
    cache = InputCache(tmp_path / "cache", 10 * MB, bound)
    # The agent writes downloads 1 MB at a time: 1.5 MB of 2 MB put 1 MB on disk.
    slow, b, c = blob("slow", 2 * MB), blob("b"), blob("c")
    slow_path, b_path, c_path = serve("slow", slow), serve("b", b), serve("c", c)
    gate = Served.held[slow_path] = threading.Event()

    def staging(path: str, name: str, run: str) -> asyncio.Task[StagedInput]:
        item = Input(name=name, url=f"{server}{path}")
        return asyncio.create_task(cache.stage(client, item, tmp_path / run / "inputs"))

    first = staging(slow_path, "slow", "r1")
    part = cache.root / (hashlib.sha256(f"{server}{slow_path}".encode()).hexdigest() + ".part")
    async with asyncio.timeout(20):
        while not (part.exists() and part.stat().st_size > 0):
            await asyncio.sleep(0.01)
    # Two other runs download meanwhile, each download evicting down to the bound.
    await staging(b_path, "b", "r2")
    await staging(c_path, "c", "r3")
    assert part.exists()  # the half-done download was not taken for a stale leftover
    assert kept(cache, server, [b_path, c_path]) == ["c"]
    gate.set()
    await first
    assert (tmp_path / "r1" / "inputs" / "slow").read_bytes() == slow
    # Its own download evicted "c"; it stays, being what its run is staged with.
    assert kept(cache, server, [slow_path, c_path]) == ["slow"]

    # One input bigger than the whole bound still reaches its run.
    big = blob("big", 2 * MB)
    big_path = serve("big", big)
    await staging(big_path, "big", "r4")
    assert (tmp_path / "r4" / "inputs" / "big").read_bytes() == big
    assert kept(cache, server, [slow_path, big_path]) == ["big"]
    assert bound.evicted == 3  # b, c, slow


def snapshot(name: str) -> bytes:
    """A .tar.gz of about 1 MB holding train.py and an incompressible data file."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for member, content in (
            ("train.py", f"print('snapshot {name}')\n".encode()),
            ("weights.bin", blob(name, MB - 64 * 1024)),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


@pytest.fixture
async def presign(nats_url: str, server: str) -> AsyncIterator[None]:
    """A stand-in for the API's ``rpc.api.code.presign``: the URL of a served snapshot."""
    nc = await nats.connect(nats_url)

    async def answer(msg: Msg) -> None:
        digest = json.loads(msg.data)["digest"]
        body = {"digest": digest, "url": f"{server}/code/{digest[7:]}.tar.gz"}
        await msg.respond(json.dumps(body).encode())

    await nc.subscribe("rpc.api.code.presign", cb=answer)
    await nc.flush()
    try:
        yield
    finally:
        await nc.drain()


async def test_the_agent_bounds_its_code_and_input_caches_together(
    tmp_path: Path, nats_url: str, server: str, presign: None
) -> None:
    settings = AgentSettings(
        home=tmp_path, nats={"url": nats_url}, agent={"name": "bounded", "cache_max_mb": 2}
    )
    broker = make_broker(settings.nats, "agent-cache-test")
    await broker.start()
    agent = Agent(settings, broker)
    published: list[object] = []

    async def capture(event: object) -> None:
        published.append(event)

    agent.spool.put = capture  # type: ignore[method-assign]  # observe what it would send

    code = snapshot("one")
    digest = "sha256:" + hashlib.sha256(code).hexdigest()
    Served.files[f"/code/{digest[7:]}.tar.gz"] = code
    inputs = {name: serve(name, blob(name, 900 * 1024)) for name in ("x", "y")}

    async def run(spec: RunSpec) -> ExperimentStarted:
        event = ExperimentAssigned(
            experiment_id=uuid.uuid4(), agent_id="bounded", project="p", run=spec
        )
        await agent.handle_assigned(event)
        async with asyncio.timeout(20):
            while not any(
                isinstance(e, ExperimentFinished) and e.experiment_id == event.experiment_id
                for e in published
            ):
                await asyncio.sleep(0.01)
        finished = next(
            e
            for e in published
            if isinstance(e, ExperimentFinished) and e.experiment_id == event.experiment_id
        )
        assert finished.status == "succeeded", finished.reason
        return next(
            e
            for e in published
            if isinstance(e, ExperimentStarted) and e.experiment_id == event.experiment_id
        )

    def with_input(name: str) -> RunSpec:
        return RunSpec(
            command=[sys.executable, "-c", "pass"],
            inputs=[Input(name=name, url=f"{server}{inputs[name]}")],
        )

    code_cache = agent.settings.work_root().parent / "code-cache"
    try:
        with_code = RunSpec(command=[sys.executable, "train.py"], code=digest)
        await run(with_code)
        await run(with_input("x"))
        assert (code_cache / f"{digest[7:]}.tar.gz").exists()  # 1.9 MB: both fit
        await run(with_input("y"))  # 2.8 MB: the snapshot, used least recently, goes
        assert not (code_cache / f"{digest[7:]}.tar.gz").exists()
        again = await run(with_code)  # fetched again, and the oldest input makes room
        assert Served.hits[f"/code/{digest[7:]}.tar.gz"] == 2
        assert (Path(again.workdir) / "train.py").exists()
        # Of the inputs only "y" is left, with its recorded digest.
        y = hashlib.sha256(f"{server}{inputs['y']}".encode()).hexdigest()
        cached = sorted(p.name for p in (agent.settings.work_root().parent / "cache").iterdir())
        assert cached == [y, f"{y}.sha256"]
        total = sum(
            os.stat(p).st_size
            for folder in (code_cache, agent.settings.work_root().parent / "cache")
            for p in folder.iterdir()
        )
        assert total <= 2 * MB
    finally:
        await agent.shutdown()
        await broker.stop()
