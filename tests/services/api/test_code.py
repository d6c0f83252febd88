"""Code snapshots: ``POST /api/v1/code`` and what experiments and agents see of them, on the
API in process (real PostgreSQL, NATS and local artifact store)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from tests.services.api.conftest import MakeProject

TRAIN = b"print('training')\n"


def make_tar(
    members: list[tuple[str, bytes | None]],
    *,
    mtime: int = 1_700_000_000,
    edit: Callable[[tarfile.TarInfo], None] | None = None,
    gzip_mtime: float | None = None,
) -> bytes:
    """A .tar.gz: ``(name, content)`` for files, ``(name, None)`` for folders."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            else:
                info.size = len(content)
                info.mode = 0o644
            if edit is not None:
                edit(info)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return gzip.compress(raw.getvalue(), mtime=gzip_mtime)


def special(name: str, kind: bytes, linkname: str = "") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("ok.py"), io.BytesIO(b""))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)
    return gzip.compress(raw.getvalue())


async def upload(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post(
        "/api/v1/code", content=data, headers={"content-type": "application/gzip"}
    )


async def stored(client: httpx.AsyncClient, members: list[tuple[str, bytes | None]]) -> str:
    response = await upload(client, make_tar(members))
    assert response.status_code == 201, response.text
    digest: str = response.json()["digest"]
    return digest


async def test_an_upload_answers_its_digest_and_lists_its_files(
    client: httpx.AsyncClient,
) -> None:
    data = make_tar(
        [("train.py", TRAIN), ("lib", None), ("lib/util.py", b"X = 1\n")],
        edit=lambda i: setattr(i, "mode", 0o755) if i.name == "train.py" else None,
    )
    response = await upload(client, data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["digest"].startswith("sha256:") and len(body["digest"]) == 71
    assert body["file_count"] == 2 and body["unpacked_size"] == len(TRAIN) + 6
    assert body["files"] == [
        {"path": "lib/util.py", "size": 6, "executable": False},
        {"path": "train.py", "size": len(TRAIN), "executable": True},
    ]
    shown = (await client.get(f"/api/v1/code/{body['digest']}")).json()
    assert shown == body
    listed = (await client.get("/api/v1/code")).json()
    assert body["digest"] in [s["digest"] for s in listed]
    content = await client.get(f"/api/v1/code/{body['digest']}/files/lib/util.py")
    assert content.status_code == 200 and content.content == b"X = 1\n"
    assert content.headers["content-type"].startswith("text/")
    archive = await client.get(f"/api/v1/code/{body['digest']}/archive")
    assert archive.status_code == 200
    assert "sha256:" + hashlib.sha256(archive.content).hexdigest() == body["digest"]
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert tar.getnames() == ["lib", "lib/util.py", "train.py"]
        assert tar.getmember("train.py").mode == 0o755


async def test_the_same_files_are_stored_once_however_they_were_packed(
    client: httpx.AsyncClient, api: FastAPI
) -> None:
    files: list[tuple[str, bytes | None]] = [("a.py", b"A = 1\n"), ("pkg/b.py", b"B = 2\n")]
    first = make_tar(files, mtime=1, gzip_mtime=1)
    # Other times, other order, an explicit folder, a leading ./: the same code.
    second = make_tar(
        [("./pkg", None), ("./pkg/b.py", b"B = 2\n"), ("./a.py", b"A = 1\n")],
        mtime=99,
        gzip_mtime=2,
    )
    assert first != second
    one, two = await upload(client, first), await upload(client, second)
    assert one.status_code == two.status_code == 201
    assert one.json()["digest"] == two.json()["digest"]
    digest = one.json()["digest"]
    objects = await api.state.fleetlab.store.list("code/")
    assert [o.key for o in objects].count(f"code/sha256/{digest[7:]}.tar.gz") == 1
    listed = (await client.get("/api/v1/code", params={"limit": 1000})).json()
    assert [s["digest"] for s in listed].count(digest) == 1
    other = await upload(client, make_tar([("a.py", b"A = 2\n")]))
    assert other.json()["digest"] != digest


async def test_a_multipart_upload_in_the_field_code_works(client: httpx.AsyncClient) -> None:
    data = make_tar([("main.py", TRAIN)])
    response = await client.post(
        "/api/v1/code", files={"code": ("code.tar.gz", data, "application/gzip")}
    )
    assert response.status_code == 201, response.text
    assert (await upload(client, data)).json()["digest"] == response.json()["digest"]
    missing = await client.post(
        "/api/v1/code", files={"other": ("code.tar.gz", data, "application/gzip")}
    )
    assert missing.status_code == 422 and "'code'" in missing.json()["error"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (make_tar([("../evil.py", b"x")]), ["'../evil.py'", "escapes"]),
        (make_tar([("ok/../../evil.py", b"x")]), ["'ok/../../evil.py'", "escapes"]),
        (make_tar([("/etc/cron.d/evil", b"x")]), ["'/etc/cron.d/evil'", "absolute"]),
        (special("link", tarfile.SYMTYPE, "/etc/passwd"), ["'link'", "symbolic link"]),
        (special("hard", tarfile.LNKTYPE, "ok.py"), ["'hard'", "hard link"]),
        (special("dev", tarfile.CHRTYPE), ["'dev'", "device file"]),
        (special("blk", tarfile.BLKTYPE), ["'blk'", "device file"]),
        (special("pipe", tarfile.FIFOTYPE), ["'pipe'", "FIFO"]),
        (make_tar([("a.py", b"1"), ("a.py", b"2")]), ["'a.py'", "twice"]),
        (b"print('not an archive')\n", ["not a gzip file"]),
        (gzip.compress(b"plain text, gzipped" * 100), ["not a tar"]),
        (make_tar([("a.py", b"x" * 5000)])[:-40], ["damaged"]),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "chardev",
        "blockdev",
        "fifo",
        "duplicate",
        "not-gzip",
        "gzip-not-tar",
        "truncated",
    ],
)
async def test_unsafe_or_broken_archives_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, api: FastAPI, data: bytes, words: list[str]
) -> None:
    before = len(await api.state.fleetlab.store.list("code/"))
    response = await upload(client, data)
    assert response.status_code == 422, response.text
    body = response.json()
    for word in words:
        assert word in body["error"], body
    assert body["fields"] and all(k.startswith("code") for k in body["fields"])
    assert len(await api.state.fleetlab.store.list("code/")) == before


async def test_archives_over_the_limits_get_413(
    client: httpx.AsyncClient, api: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = api.state.fleetlab.settings
    # A gzip bomb: 3 MiB of zeros compress to a few KiB.
    bomb = make_tar([("zeros.bin", bytes(3 << 20))])
    assert len(bomb) < 64 * 1024
    monkeypatch.setattr(settings, "max_code_unpacked_mb", 2)
    response = await upload(client, bomb)
    assert response.status_code == 413
    assert "unpacks to more than 2 MiB" in response.json()["error"]
    monkeypatch.setattr(settings, "max_code_unpacked_mb", 1024)
    monkeypatch.setattr(settings, "max_code_files", 3)
    many = make_tar([(f"f{i}.py", b"") for i in range(5)])
    response = await upload(client, many)
    assert response.status_code == 413 and "more than 3 members" in response.json()["error"]
    monkeypatch.setattr(settings, "max_code_files", 50_000)
    monkeypatch.setattr(settings, "max_code_mb", 1)
    noise = make_tar([("noise.bin", random.Random(7).randbytes(2 << 20))])  # incompressible
    big = await client.post(
        "/api/v1/code",
        content=noise,
        headers={"content-type": "application/gzip"},
    )
    assert big.status_code == 413 and "1 MiB" in big.json()["error"]

    async def chunks() -> Any:
        for start in range(0, len(noise), 65536):
            yield noise[start : start + 65536]

    streamed = await client.post(
        "/api/v1/code", content=chunks(), headers={"content-type": "application/gzip"}
    )
    assert streamed.status_code == 413


async def test_bad_references_are_refused_by_name(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/code/not-a-digest")).status_code == 422
    unknown = "sha256:" + "0" * 64
    assert (await client.get(f"/api/v1/code/{unknown}")).status_code == 404
    digest = await stored(client, [("a.py", b"")])
    missing = await client.get(f"/api/v1/code/{digest}/files/nope.py")
    assert missing.status_code == 404 and "nope.py" in missing.json()["error"]
    wrong_type = await client.post(
        "/api/v1/code", content=b"{}", headers={"content-type": "application/json"}
    )
    assert wrong_type.status_code == 415


async def test_experiments_run_their_snapshot_or_the_project_s_default(
    client: httpx.AsyncClient, make_project: MakeProject, nc: NatsClient
) -> None:
    own = await stored(client, [("train.py", b"print('own')\n")])
    default = await stored(client, [("train.py", b"print('default')\n")])
    project = await make_project(code=default)
    assert project["code"] == default
    seen: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe("api.experiment.submitted", cb=seen.put)
    await nc.flush()
    try:
        mine = await client.post(
            "/api/v1/experiments", json={"project": project["name"], "code": own}
        )
        assert mine.status_code == 201, mine.text
        assert mine.json()["code"] == own
        theirs = await client.post("/api/v1/experiments", json={"project": project["name"]})
        assert theirs.json()["code"] == default
        runs: dict[str, Any] = {}
        while len(runs) < 2:
            event = json.loads((await asyncio.wait_for(seen.get(), 10)).data)
            runs[event["experiment_id"]] = event["run"]
    finally:
        await sub.unsubscribe()
    assert runs[mine.json()["id"]]["code"] == own
    assert runs[theirs.json()["id"]]["code"] == default
    again = await client.post(f"/api/v1/experiments/{mine.json()['id']}/restart")
    assert again.status_code == 201 and again.json()["code"] == own
    shown = (await client.get(f"/api/v1/experiments/{again.json()['id']}")).json()
    assert shown["code"] == own
    artifacts = (await client.get(f"/api/v1/experiments/{mine.json()['id']}/artifacts")).json()
    code = [a for a in artifacts if a["kind"] == "code"]
    assert len(code) == 1 and "sha256:" + code[0]["sha256"] == own


async def test_an_unknown_snapshot_is_refused_naming_code_and_creates_nothing(
    client: httpx.AsyncClient, make_project: MakeProject
) -> None:
    project = await make_project()
    unknown = "sha256:" + "ab" * 32
    response = await client.post(
        "/api/v1/experiments", json={"project": project["name"], "code": unknown}
    )
    assert response.status_code == 422 and "code" in response.json()["fields"]
    for bad_ref in ("main", ""):
        bad = await client.post(
            "/api/v1/experiments", json={"project": project["name"], "code": bad_ref}
        )
        assert bad.status_code == 422 and "code" in bad.json()["fields"]
    listed = (await client.get("/api/v1/experiments", params={"project": project["name"]})).json()
    assert listed["items"] == []
    refused = await client.post(
        "/api/v1/projects",
        json={"name": f"{project['name']}-x", "command": ["true"], "code": unknown},
    )
    assert refused.status_code == 422 and "code" in refused.json()["fields"]
    patched = await client.patch(f"/api/v1/projects/{project['id']}", json={"code": unknown})
    assert patched.status_code == 422 and "code" in patched.json()["fields"]


async def test_an_agent_gets_a_short_lived_download_url_over_nats(
    client: httpx.AsyncClient, nc: NatsClient
) -> None:
    digest = await stored(client, [("train.py", TRAIN)])
    reply = await nc.request("rpc.api.code.presign", json.dumps({"digest": digest}).encode(), 5)
    answer = json.loads(reply.data)
    assert answer["digest"] == digest and "error" not in answer
    parts = urlsplit(answer["url"])
    fetched = await client.get(f"{parts.path}?{parts.query}")
    assert fetched.status_code == 200
    assert "sha256:" + hashlib.sha256(fetched.content).hexdigest() == digest
    assert len(fetched.content) == answer["size"]
    unknown = "sha256:" + "0" * 64
    reply = await nc.request("rpc.api.code.presign", json.dumps({"digest": unknown}).encode(), 5)
    assert "no code snapshot" in json.loads(reply.data)["error"]
