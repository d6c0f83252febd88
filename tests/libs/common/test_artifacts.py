"""The artifact store: one behavioural suite run on the local backend and on S3 (moto)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from fleetlab_common.artifacts import (
    ArtifactConfigError,
    ArtifactInfo,
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactSignatureError,
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    compute_signature,
    make_store,
    verify_signature,
)
from fleetlab_common.artifacts.base import RESERVED_SEGMENT_PREFIX
from fleetlab_common.artifacts.s3 import parse_endpoint
from fleetlab_common.embedded import free_port
from fleetlab_common.settings import CommonSettings

SECRET = b"test-secret"
BASE_URL = "http://api.test:8080"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def s3_store(endpoint: str, bucket: str | None = None) -> S3ArtifactStore:
    return S3ArtifactStore(
        endpoint,
        access_key="test",
        secret_key="test",
        bucket=bucket or f"t-{uuid.uuid4().hex[:16]}",
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts", base_url=BASE_URL, secret=SECRET)
    # A fresh bucket per test keeps listings independent; it is made on first write.
    return s3_store(request.getfixturevalue("s3_endpoint"))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


# -- the shared suite ---------------------------------------------------------------------


async def test_is_an_artifact_store(store: ArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)


async def test_put_get_round_trip(store: ArtifactStore) -> None:
    data = b"hello artifacts\n"
    before = datetime.now(UTC) - timedelta(seconds=5)
    info = await store.put_bytes("runs/1/out.txt", data, content_type="text/plain")
    assert info.key == "runs/1/out.txt"
    assert info.size == len(data)
    assert info.sha256 == sha(data)
    assert info.content_type == "text/plain"
    assert info.modified_at.tzinfo is not None
    assert before <= info.modified_at <= datetime.now(UTC) + timedelta(seconds=5)

    assert await store.get_bytes("runs/1/out.txt") == data
    stat = await store.stat("runs/1/out.txt")
    assert stat is not None
    assert (stat.key, stat.size, stat.sha256, stat.content_type) == (
        "runs/1/out.txt",
        len(data),
        sha(data),
        "text/plain",
    )
    assert stat.modified_at.tzinfo is not None


async def test_default_content_type_empty_and_unicode(store: ArtifactStore) -> None:
    info = await store.put_bytes("empty.bin", b"")
    assert (info.size, info.sha256, info.content_type) == (
        0,
        sha(b""),
        "application/octet-stream",
    )
    assert await store.get_bytes("empty.bin") == b""

    key = "données/é 1+2.txt"
    await store.put_bytes(key, "ünïcode".encode())
    assert await store.get_bytes(key) == "ünïcode".encode()
    assert [i.key for i in await store.list("données/")] == [key]


async def test_overwrite_replaces_content_and_hash(store: ArtifactStore) -> None:
    await store.put_bytes("k", b"first", content_type="text/plain")
    info = await store.put_bytes("k", b"second version", content_type="application/json")
    assert await store.get_bytes("k") == b"second version"
    stat = await store.stat("k")
    assert stat is not None
    assert stat.sha256 == info.sha256 == sha(b"second version")
    assert stat.content_type == "application/json"
    assert stat.size == len(b"second version")


async def test_put_file_large_and_get_file(store: ArtifactStore, tmp_path: Path) -> None:
    # 12 MiB: above S3's 5 MiB part size, so the S3 backend takes the multipart path.
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024 + 123))
    expected = file_sha(src)

    info = await store.put_file("runs/big.bin", src)
    assert info.size == src.stat().st_size
    assert info.sha256 == expected
    assert info.content_type == "application/octet-stream"

    dest = tmp_path / "down" / "nested" / "big.bin"
    await store.get_file("runs/big.bin", dest)
    assert file_sha(dest) == expected
    # Nothing but the file itself is left in the destination folder.
    assert [p.name for p in dest.parent.iterdir()] == ["big.bin"]

    stat = await store.stat("runs/big.bin")
    assert stat is not None
    assert (stat.size, stat.sha256) == (info.size, expected)

    # get_file replaces an existing destination file.
    await store.put_bytes("small", b"small")
    await store.get_file("small", dest)
    assert dest.read_bytes() == b"small"


async def test_stat_exists_list_with_prefixes(store: ArtifactStore) -> None:
    assert await store.list() == []
    contents = {
        "runs/1/a.txt": b"a",
        "runs/1/b/c.txt": b"cc",
        "runs/10/x.bin": b"xxx",
        "runs/2/y": b"yyyy",
        "other/z": b"zzzzz",
    }
    await asyncio.gather(*(store.put_bytes(k, v) for k, v in contents.items()))

    everything = await store.list()
    assert [i.key for i in everything] == sorted(contents)
    for info in everything:
        assert isinstance(info, ArtifactInfo)
        assert info.size == len(contents[info.key])
        # S3 listings carry the hash only where the server returns user metadata (MinIO).
        assert info.sha256 in (None, sha(contents[info.key]))
        assert info.modified_at.tzinfo is not None

    assert [i.key for i in await store.list("runs/1/")] == ["runs/1/a.txt", "runs/1/b/c.txt"]
    assert [i.key for i in await store.list("runs/1")] == [
        "runs/1/a.txt",
        "runs/1/b/c.txt",
        "runs/10/x.bin",
    ]
    assert [i.key for i in await store.list("runs/1/b")] == ["runs/1/b/c.txt"]
    assert [i.key for i in await store.list("runs/1/a.txt")] == ["runs/1/a.txt"]
    assert [i.key for i in await store.list("ot")] == ["other/z"]
    assert await store.list("nothing/") == []
    assert await store.list("runs/3") == []

    assert await store.exists("runs/2/y")
    assert not await store.exists("runs/2")  # a prefix of keys is not itself a key
    assert not await store.exists("runs/2/y/deeper")
    assert await store.stat("runs/2") is None
    assert await store.stat("missing") is None


async def test_delete(store: ArtifactStore) -> None:
    await store.put_bytes("a/b/c", b"data")
    await store.put_bytes("a/keep", b"keep")
    await store.delete("a/b/c")
    assert not await store.exists("a/b/c")
    assert await store.stat("a/b/c") is None
    with pytest.raises(ArtifactNotFoundError):
        await store.get_bytes("a/b/c")
    assert [i.key for i in await store.list("a/")] == ["a/keep"]

    await store.delete("a/b/c")  # again: not an error
    await store.delete("never/was/here")
    await store.delete("a/b")  # names a prefix, not a key: nothing happens
    assert await store.get_bytes("a/keep") == b"keep"

    # Once 'a/b/c' is gone, 'a/b' is free to be a key itself.
    await store.put_bytes("a/b", b"now a key")
    assert await store.get_bytes("a/b") == b"now a key"


async def test_missing_key_errors(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match="no/such/key") as caught:
        await store.get_bytes("no/such/key")
    assert isinstance(caught.value, KeyError)
    assert caught.value.key == "no/such/key"
    assert str(caught.value) == "artifact 'no/such/key' not found"

    dest = tmp_path / "dest.bin"
    with pytest.raises(ArtifactNotFoundError, match="no/such/key"):
        await store.get_file("no/such/key", dest)
    assert not dest.exists()


BAD_KEYS = [
    ("", "empty"),
    ("/abs/key", "absolute"),
    ("../escape", "'..'"),
    ("a/../../escape", "'..'"),
    ("a/..", "'..'"),
    ("a\\b", "backslash"),
    ("a\x00b", "NUL"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("./a", "'.'"),
    (f"a/{RESERVED_SEGMENT_PREFIX}x", "reserved"),
    ("x" * 1025, "1024"),
]


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS, ids=[r for _, r in BAD_KEYS])
async def test_bad_keys_refused_everywhere(
    store: ArtifactStore, tmp_path: Path, key: str, reason: str
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, src),
        lambda: store.get_bytes(key),
        lambda: store.get_file(key, tmp_path / "dest"),
        lambda: store.stat(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.presigned_get_url(key),
        lambda: store.presigned_put_url(key),
    ]
    for call in calls:
        with pytest.raises(ArtifactKeyError) as caught:
            await call()
        assert isinstance(caught.value, ValueError)
        assert repr(key) in str(caught.value)
        assert reason in str(caught.value)
    assert await store.list() == []


@pytest.mark.parametrize("prefix", ["/abs", "../x", "a/../b/", "a\\b", "a\x00", "a//b"])
async def test_bad_list_prefix_refused(store: ArtifactStore, prefix: str) -> None:
    with pytest.raises(ArtifactKeyError, match="invalid artifact key"):
        await store.list(prefix)


async def test_presigned_expiry_bounds(store: ArtifactStore) -> None:
    for expires_s in (0, -5, 8 * 24 * 3600):
        with pytest.raises(ValueError, match="expires_s"):
            await store.presigned_get_url("k", expires_s=expires_s)
        with pytest.raises(ValueError, match="expires_s"):
            await store.presigned_put_url("k", expires_s=expires_s)


async def test_ping_live(store: ArtifactStore) -> None:
    assert await store.ping() is True


async def test_concurrent_puts(store: ArtifactStore) -> None:
    keys = [f"c/{i % 4}/{i}" for i in range(24)]
    await asyncio.gather(*(store.put_bytes(k, k.encode()) for k in keys))
    assert [i.key for i in await store.list("c/")] == sorted(keys)
    got = await asyncio.gather(*(store.get_bytes(k) for k in keys))
    assert got == [k.encode() for k in keys]


# -- local backend --------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store", base_url=BASE_URL + "/", secret=SECRET)


def url_params(url: str) -> tuple[str, str, int, str]:
    """(op, key, expires, sig) of a local presigned URL, checking its shape."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE_URL
    assert parts.path.startswith("/api/v1/artifacts/signed/")
    key = unquote(parts.path.removeprefix("/api/v1/artifacts/signed/"))
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert set(query) == {"op", "expires", "sig"}
    return query["op"], key, int(query["expires"]), query["sig"]


@pytest.mark.parametrize("key", ["runs/1/model.pt", "données/a b+c?.txt"])
async def test_local_presigned_urls_verify(local: LocalArtifactStore, key: str) -> None:
    now = time.time()
    for op, url in (
        ("get", await local.presigned_get_url(key, expires_s=60)),
        ("put", await local.presigned_put_url(key, expires_s=60)),
    ):
        url_op, url_key, expires, sig = url_params(url)
        assert (url_op, url_key) == (op, key)
        assert now + 59 <= expires <= now + 62
        assert sig == compute_signature(SECRET, op, key, expires)

        verify_signature(SECRET, op, key, expires, sig)  # accepted
        verify_signature(SECRET, op, key, expires, sig, now=expires)  # last valid second

        with pytest.raises(ArtifactSignatureError, match="bad signature") as caught:
            verify_signature(SECRET, op, key + "x", expires, sig)
        assert isinstance(caught.value, PermissionError)
        with pytest.raises(ArtifactSignatureError, match="bad signature"):
            verify_signature(SECRET, op, "runs/other", expires, sig)
        tampered = ("0" if sig[0] != "0" else "1") + sig[1:]
        with pytest.raises(ArtifactSignatureError, match="bad signature"):
            verify_signature(SECRET, op, key, expires, tampered)
        with pytest.raises(ArtifactSignatureError, match="bad signature"):
            verify_signature(SECRET, op, key, expires + 3600, sig)  # stretched expiry
        with pytest.raises(ArtifactSignatureError, match="bad signature"):
            verify_signature(b"another secret", op, key, expires, sig)
        with pytest.raises(ArtifactSignatureError, match="bad signature"):
            verify_signature(SECRET, op, key, expires, "ünïcode-not-hex")
        with pytest.raises(ArtifactSignatureError, match="expired"):
            verify_signature(SECRET, op, key, expires, sig, now=expires + 1)
        other = "put" if op == "get" else "get"
        with pytest.raises(ArtifactSignatureError, match=f"signed for '{op}', not '{other}'"):
            verify_signature(SECRET, other, key, expires, sig)
        with pytest.raises(ArtifactSignatureError, match="unknown artifact operation"):
            verify_signature(SECRET, "delete", key, expires, sig)


async def test_local_layout_sidecar_and_no_temp_files(local: LocalArtifactStore) -> None:
    await local.put_bytes("a/b.txt", b"content", content_type="text/plain")
    assert (local.root / "objects" / "a" / "b.txt").read_bytes() == b"content"
    assert (local.root / "meta" / "a" / "b.txt.json").is_file()
    leftovers = [p for p in local.root.rglob("*") if p.name.startswith(RESERVED_SEGMENT_PREFIX)]
    assert leftovers == []


async def test_local_file_changed_behind_the_store_loses_its_hash(
    local: LocalArtifactStore,
) -> None:
    await local.put_bytes("k", b"original", content_type="text/plain")
    (local.root / "objects" / "k").write_bytes(b"changed by hand!")
    stat = await local.stat("k")
    assert stat is not None
    assert (stat.size, stat.sha256, stat.content_type) == (16, None, None)
    # A file dropped in by hand is still an artifact, just one the store cannot vouch for.
    (local.root / "objects" / "dropped").write_bytes(b"x")
    listed = {i.key: i for i in await local.list()}
    assert set(listed) == {"k", "dropped"}
    assert listed["dropped"].sha256 is None


async def test_local_key_cannot_be_a_folder_of_keys(local: LocalArtifactStore) -> None:
    await local.put_bytes("a", b"file")
    with pytest.raises(ArtifactKeyError, match="collides with key 'a'"):
        await local.put_bytes("a/b/c", b"x")
    await local.put_bytes("d/e", b"x")
    with pytest.raises(ArtifactKeyError, match="collides with keys under 'd/'"):
        await local.put_bytes("d", b"x")
    assert await local.get_bytes("a") == b"file"
    with pytest.raises(ArtifactNotFoundError):
        await local.get_bytes("d")


async def test_local_delete_prunes_empty_folders(local: LocalArtifactStore) -> None:
    await local.put_bytes("x/y/z", b"1")
    await local.delete("x/y/z")
    assert list((local.root / "objects").iterdir()) == []
    assert list((local.root / "meta").iterdir()) == []


async def test_local_ping_false_when_root_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "not-a-dir"
    root.write_bytes(b"")
    assert await LocalArtifactStore(root, BASE_URL, SECRET).ping() is False
    # Below a file, the root cannot be made either.
    assert await LocalArtifactStore(root / "below", BASE_URL, SECRET).ping() is False
    # A write reports the broken root as it is, not as a clash between keys.
    with pytest.raises(OSError) as caught:
        await LocalArtifactStore(root, BASE_URL, SECRET).put_bytes("k", b"x")
    assert not isinstance(caught.value, ArtifactKeyError)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root writes through permissions"
)
async def test_local_ping_false_when_unwritable(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    (root / "objects").mkdir(parents=True)
    (root / "meta").mkdir()
    (root / "objects").chmod(0o500)
    try:
        assert await LocalArtifactStore(root, BASE_URL, SECRET).ping() is False
    finally:
        (root / "objects").chmod(0o700)


def test_local_store_needs_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="secret"):
        LocalArtifactStore(tmp_path, BASE_URL, b"")


# -- S3 backend (moto) ----------------------------------------------------------------------


async def test_s3_presigned_get_downloads(s3_endpoint: str, http: httpx.Client) -> None:
    store = s3_store(s3_endpoint)
    data = os.urandom(4096)
    await store.put_bytes("runs/1/weights.bin", data)
    url = await store.presigned_get_url("runs/1/weights.bin", expires_s=60)
    assert "X-Amz-Signature=" in url
    response = await asyncio.to_thread(http.get, url)
    assert response.status_code == 200
    assert response.content == data


async def test_s3_presigned_put_uploads(s3_endpoint: str, http: httpx.Client) -> None:
    store = s3_store(s3_endpoint)  # bucket not made yet: presigning a PUT makes it
    url = await store.presigned_put_url("inputs/data.csv", expires_s=60)
    response = await asyncio.to_thread(http.put, url, content=b"a,b\n1,2\n")
    assert response.status_code == 200
    assert await store.get_bytes("inputs/data.csv") == b"a,b\n1,2\n"
    stat = await store.stat("inputs/data.csv")
    assert stat is not None
    assert stat.size == 8
    assert stat.sha256 is None  # uploaded past the store: no hash to vouch for


async def test_s3_large_file_went_multipart(s3_endpoint: str, tmp_path: Path) -> None:
    store = s3_store(s3_endpoint)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024))
    await store.put_file("big.bin", src)
    obj = await asyncio.to_thread(store._client.stat_object, store.bucket, "big.bin")
    # A multipart upload's ETag ends in '-<number of parts>'.
    assert obj.etag is not None
    assert obj.etag.endswith("-3")
    assert obj.metadata is not None
    assert obj.metadata.get("x-amz-meta-sha256") == file_sha(src)


async def test_s3_reads_before_bucket_exists(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint)
    assert await store.list() == []
    assert await store.stat("k") is None
    assert not await store.exists("k")
    await store.delete("k")
    with pytest.raises(ArtifactNotFoundError):
        await store.get_bytes("k")
    assert await store.ping() is True


async def test_s3_remakes_a_vanished_bucket(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint)
    await store.ensure_bucket()
    await store.ensure_bucket()  # idempotent
    await asyncio.to_thread(store._client.remove_bucket, store.bucket)
    await store.put_bytes("k", b"v")
    assert await store.get_bytes("k") == b"v"


async def test_s3_ping_false_on_closed_port() -> None:
    store = s3_store(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert await store.ping() is False
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("endpoint", "secure", "expected"),
    [
        ("minio:9000", False, ("minio:9000", False)),
        ("minio:9000", True, ("minio:9000", True)),
        ("http://minio:9000", True, ("minio:9000", False)),
        ("https://minio:9000/", False, ("minio:9000", True)),
        ("https://s3.amazonaws.com", False, ("s3.amazonaws.com", True)),
    ],
)
def test_s3_endpoint_forms(endpoint: str, secure: bool, expected: tuple[str, bool]) -> None:
    assert parse_endpoint(endpoint, secure) == expected
    store = S3ArtifactStore(endpoint, "k", "s", "bucket", secure=secure)
    assert (store.endpoint, store.secure) == expected


@pytest.mark.parametrize(
    "endpoint", ["", "ftp://minio:9000", "http://minio:9000/bucket", "http://u:p@minio:9000"]
)
def test_s3_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(ArtifactConfigError, match="S3 endpoint"):
        parse_endpoint(endpoint)


# -- the factory ----------------------------------------------------------------------------


def test_make_store_local(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path / "home")
    store = make_store(settings, BASE_URL, SECRET)
    assert isinstance(store, LocalArtifactStore)
    assert store.root == settings.artifact_root() == (tmp_path / "home" / "artifacts")
    assert store.base_url == BASE_URL


def test_make_store_s3(s3_endpoint: str) -> None:
    settings = CommonSettings.model_validate(
        {
            "artifacts": {
                "backend": "s3",
                "s3": {
                    "endpoint": s3_endpoint,
                    "access_key": "ak",
                    "secret_key": "sk",
                    "bucket": "fleet-bucket",
                },
            }
        }
    )
    store = make_store(settings, BASE_URL, SECRET)
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.secure) == ("fleet-bucket", False)


def test_make_store_s3_without_endpoint_refused() -> None:
    settings = CommonSettings.model_validate({"artifacts": {"backend": "s3"}})
    with pytest.raises(ArtifactConfigError, match="endpoint is empty"):
        make_store(settings, BASE_URL, SECRET)


def test_local_store_works_without_minio(tmp_path: Path) -> None:
    # A process without the s3 extra: importing minio fails there.
    code = (
        "import asyncio, sys; sys.modules['minio'] = None\n"
        "from pathlib import Path\n"
        "from fleetlab_common.artifacts import LocalArtifactStore\n"
        f"s = LocalArtifactStore(Path({str(tmp_path)!r}), 'http://x', b's')\n"
        "asyncio.run(s.put_bytes('k', b'v'))\n"
        "print(asyncio.run(s.get_bytes('k')).decode())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "v"
