"""Code snapshots on the agent: fetched through a presigned URL asked for over NATS, cached by
digest, checked, and unpacked safely into the run's working directory."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.server
import io
import json
import sys
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from fleetlab_agent.code import CodeError, unpack
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import make_broker
from fleetlab_common.events import (
    EncodedEvent,
    ExperimentAssigned,
    ExperimentFinished,
    ExperimentStarted,
    LogLinesAppended,
)
from fleetlab_common.runspec import RunSpec

TRAIN = b"import helper\nprint('trained with', helper.LR)\n"


def tar_gz(members: list[tuple[str, bytes | None, bytes]], mode: int = 0o644) -> bytes:
    """``(name, content or None, type)`` members, as a .tar.gz."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else mode
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/passwd"
            info.size = len(content or b"") if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return gzip.compress(raw.getvalue())


def files(*pairs: tuple[str, bytes]) -> bytes:
    return tar_gz([(name, content, tarfile.REGTYPE) for name, content in pairs])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Archives(http.server.BaseHTTPRequestHandler):
    served: dict[str, bytes] = {}
    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        Archives.hits[self.path] = Archives.hits.get(self.path, 0) + 1
        data = Archives.served.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("content-length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archives)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
async def presign(nats_url: str, server: str) -> AsyncIterator[list[str]]:
    """A stand-in for the API's ``rpc.api.code.presign``: a URL for every digest served
    here, an error for the rest. Yields the digests asked for."""
    asked: list[str] = []
    nc = await nats.connect(nats_url)

    async def answer(msg: nats.aio.msg.Msg) -> None:
        digest = json.loads(msg.data)["digest"]
        asked.append(digest)
        path = f"/{digest[7:]}.tar.gz"
        if path in Archives.served:
            body = {"digest": digest, "url": f"{server}{path}"}
        else:
            body = {"error": f"no code snapshot {digest} is stored"}
        await msg.respond(json.dumps(body).encode())

    await nc.subscribe("rpc.api.code.presign", cb=answer)
    await nc.flush()
    try:
        yield asked
    finally:
        await nc.drain()


def serve(data: bytes, *, as_digest: str | None = None) -> str:
    digest = as_digest or digest_of(data)
    Archives.served[f"/{digest[7:]}.tar.gz"] = data
    return digest


@pytest.fixture
async def agent(tmp_path: Path, nats_url: str) -> AsyncIterator[Agent]:
    settings = AgentSettings(home=tmp_path, nats={"url": nats_url}, agent={"name": "code"})
    broker = make_broker(settings.nats, "agent-code-test")
    await broker.start()
    made = Agent(settings, broker)
    try:
        yield made
    finally:
        await made.shutdown()
        await broker.stop()


async def run_all(agent: Agent, events: list[ExperimentAssigned]) -> list[object]:
    published: list[object] = []

    async def capture(event: object) -> None:
        # Line batches come already encoded: read back as the consumers read them.
        published.append(event.decode() if isinstance(event, EncodedEvent) else event)

    agent.spool.put = capture  # type: ignore[method-assign]  # observe what it would send
    for event in events:
        await agent.handle_assigned(event)
    async with asyncio.timeout(20):
        while sum(isinstance(e, ExperimentFinished) for e in published) < len(events):
            await asyncio.sleep(0.01)
    return published


def assigned(code: str | None, command: list[str]) -> ExperimentAssigned:
    return ExperimentAssigned(
        experiment_id=uuid.uuid4(),
        agent_id="code",
        project="p",
        run=RunSpec(command=command, code=code, option_style="plain"),
    )


async def test_the_run_starts_from_its_snapshot_fetched_once(
    agent: Agent, presign: list[str]
) -> None:
    data = tar_gz(
        [
            ("./train.py", TRAIN, tarfile.REGTYPE),
            ("helper.py", b"LR = 0.5\n", tarfile.REGTYPE),
            ("scripts", None, tarfile.DIRTYPE),
        ]
    )
    digest = serve(data)
    command = [sys.executable, "train.py"]
    published = await run_all(agent, [assigned(digest, command), assigned(digest, command)])
    finished = [e for e in published if isinstance(e, ExperimentFinished)]
    assert [f.status for f in finished] == ["succeeded", "succeeded"], finished
    lines = [ln.line for e in published if isinstance(e, LogLinesAppended) for ln in e.lines]
    assert lines == ["trained with 0.5", "trained with 0.5"]
    assert presign == [digest]  # asked for once, downloaded once, for both runs
    assert Archives.hits[f"/{digest[7:]}.tar.gz"] == 1
    started = [e for e in published if isinstance(e, ExperimentStarted)]
    workdir = Path(started[0].workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [
        "helper.py",
        "inputs",
        "outputs",
        "scripts",
        "train.py",
    ]


async def test_an_executable_keeps_its_mode(agent: Agent, presign: list[str]) -> None:
    script = b"#!/bin/sh\necho from the snapshot\n"
    digest = serve(tar_gz([("run.sh", script, tarfile.REGTYPE)], mode=0o755))
    published = await run_all(agent, [assigned(digest, ["./run.sh"])])
    finished = next(e for e in published if isinstance(e, ExperimentFinished))
    assert finished.status == "succeeded", finished.reason


async def test_a_snapshot_that_cannot_be_had_fails_the_run_naming_it(
    agent: Agent, presign: list[str]
) -> None:
    unknown = "sha256:" + "0" * 64
    real = files(("train.py", b"print(1)\n"))
    # Served under a digest it does not have: a forged or damaged download.
    forged = serve(real, as_digest="sha256:" + "1" * 64)
    escaping = serve(files(("../../evil.py", b"boom")))
    published = await run_all(
        agent,
        [
            assigned(unknown, [sys.executable, "train.py"]),
            assigned(forged, [sys.executable, "train.py"]),
            assigned(escaping, [sys.executable, "-c", "pass"]),
        ],
    )
    finished = {e.experiment_id: e for e in published if isinstance(e, ExperimentFinished)}
    reasons = sorted(str(f.reason) for f in finished.values())
    assert all(not f.started and f.status == "failed" for f in finished.values())
    assert any(unknown in r and "no code snapshot" in r for r in reasons), reasons
    assert any(forged in r and "does not match its digest" in r for r in reasons), reasons
    assert any(escaping in r and "'..' escapes" in r for r in reasons), reasons
    assert not (agent.settings.work_root().parent.parent / "evil.py").exists()


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([("../x.py", b"x", tarfile.REGTYPE)], "'..' escapes"),
        ([("/tmp/x.py", b"x", tarfile.REGTYPE)], "absolute path"),
        ([("link", None, tarfile.SYMTYPE)], "is a link"),
        ([("hard", None, tarfile.LNKTYPE)], "is a link"),
        ([("dev", None, tarfile.CHRTYPE)], "is a device file"),
        ([("pipe", None, tarfile.FIFOTYPE)], "is a FIFO"),
        ([("a.py", b"1", tarfile.REGTYPE), ("a.py", b"2", tarfile.REGTYPE)], "exists already"),
        ([("outputs", b"not a folder", tarfile.REGTYPE)], "exists already"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "twice", "clash"],
)
def test_unsafe_members_are_refused_when_unpacking(
    tmp_path: Path, members: list[tuple[str, bytes | None, bytes]], words: str
) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz(members))
    dest = tmp_path / "work"
    (dest / "outputs").mkdir(parents=True)
    with pytest.raises(CodeError, match=words):
        unpack(archive, dest)
    assert not (tmp_path / "x.py").exists()


def test_nothing_is_written_through_a_link_in_the_working_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "work"
    dest.mkdir()
    (dest / "lib").symlink_to(outside)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(files(("lib/evil.py", b"x")))
    with pytest.raises(CodeError, match="not a folder"):
        unpack(archive, dest)
    assert list(outside.iterdir()) == []


def test_a_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(files(("zeros", bytes(4 << 20))))
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(CodeError, match="more than"):
        unpack(archive, tmp_path, max_unpacked=1 << 20)
