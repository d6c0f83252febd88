"""Artifacts in a local directory: the embedded default.

Layout under ``root``::

    objects/<key>          the content, one file per key
    meta/<key>.json        sidecar: sha256, content type, and the size, mtime and inode of the
                           content file it describes

The sha256 is computed while the content is written and kept in the sidecar. ``stat`` and
``list`` trust a sidecar only while the content file still has the size, mtime and inode the
sidecar recorded; otherwise (a file changed or dropped in by hand, or a sidecar not yet
rewritten by a concurrent put) they report ``sha256`` and ``content_type`` as ``None`` rather
than a wrong value.

Every write goes to a temporary file in the target's own folder (so the rename cannot cross
file systems), is fsynced, and is renamed over the target with ``os.replace``: a reader sees
the old content or the new, never a part. Because keys are paths here, a key cannot also be a
folder of other keys (``a`` and ``a/b``); such a put raises :class:`ArtifactKeyError`.

Presigned URLs point at the API service's route
``{base_url}/api/v1/artifacts/signed/{key}?op=get|put&expires=<unix ts>&sig=<hex>``, where
``sig`` is the HMAC-SHA256 of ``op``, ``key`` and ``expires`` under the store's secret; the
route checks them with :func:`verify_signature` and then reads or writes through the store.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat as stat_mod
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from fleetlab_common.artifacts.base import (
    CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    RESERVED_SEGMENT_PREFIX,
    ArtifactInfo,
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactSignatureError,
    validate_expires,
    validate_key,
    validate_prefix,
)

SIGNED_ROUTE = "/api/v1/artifacts/signed/"
_OPS = ("get", "put")
# A concurrent delete may prune the folder a write has just made; that many tries is plenty.
_MKDIR_ATTEMPTS = 5


def compute_signature(secret: bytes, op: str, key: str, expires: int) -> str:
    """Hex HMAC-SHA256 of ``op``, ``key`` and ``expires`` under ``secret``.

    The three fields are joined with newlines; ``op`` and ``expires`` hold none, so the message
    splits back into exactly one (op, key, expires) and no two triples sign alike.
    """
    message = f"{op}\n{key}\n{int(expires)}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes,
    op: str,
    key: str,
    expires: int,
    sig: str,
    now: float | None = None,
) -> None:
    """Check a local presigned URL's parameters; return quietly when they authorise ``op``.

    ``op`` is the operation the request performs (``"get"`` or ``"put"``), ``key``,
    ``expires`` and ``sig`` come from the URL, ``now`` defaults to the current time.
    Raises :class:`ArtifactSignatureError` when the signature does not match (naming the
    operation it was made for when it was made for another one) or the URL has expired.
    """
    if op not in _OPS:
        raise ArtifactSignatureError(f"unknown artifact operation {op!r}: expected 'get' or 'put'")
    given = sig.encode("utf-8", "replace")
    # compare_digest on str refuses non-ASCII input with TypeError; bytes are always accepted.
    if not hmac.compare_digest(compute_signature(secret, op, key, expires).encode(), given):
        for other in _OPS:
            if other != op and hmac.compare_digest(
                compute_signature(secret, other, key, expires).encode(), given
            ):
                raise ArtifactSignatureError(
                    f"presigned URL for artifact {key!r} was signed for {other!r}, not {op!r}"
                )
        raise ArtifactSignatureError(f"bad signature on presigned URL for artifact {key!r}")
    current = time.time() if now is None else now
    if current > expires:
        raise ArtifactSignatureError(
            f"presigned URL for artifact {key!r} expired {current - expires:.0f} s ago"
        )


class LocalArtifactStore:
    """An :class:`~fleetlab_common.artifacts.ArtifactStore` over a directory.

    ``root`` is made on first write (or ``ping``). ``base_url`` is where the API service
    answers (presigned URLs point at it); ``secret`` signs those URLs and must be shared with
    the service that verifies them. Blocking file I/O runs in worker threads.
    """

    def __init__(self, root: Path, base_url: str, secret: bytes) -> None:
        if not secret:
            raise ValueError("LocalArtifactStore needs a non-empty secret to sign URLs")
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"

    def __repr__(self) -> str:
        return f"LocalArtifactStore(root={str(self.root)!r}, base_url={self.base_url!r})"

    # -- the interface --------------------------------------------------------------------

    async def put_bytes(
        self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ArtifactInfo:
        """Store ``data`` under ``key``, replacing what was there."""
        validate_key(key)
        return await asyncio.to_thread(self._put, key, (bytes(data),), content_type)

    async def put_file(
        self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ArtifactInfo:
        """Store the file at ``path`` under ``key``, copying it in chunks."""
        validate_key(key)
        return await asyncio.to_thread(self._put_file, key, Path(path), content_type)

    async def get_bytes(self, key: str) -> bytes:
        """The whole content of ``key``."""
        validate_key(key)
        return await asyncio.to_thread(self._get_bytes, key)

    async def get_file(self, key: str, dest: Path) -> None:
        """Copy ``key`` to ``dest`` (atomically; parent folders are made)."""
        validate_key(key)
        await asyncio.to_thread(self._get_file, key, Path(dest))

    async def stat(self, key: str) -> ArtifactInfo | None:
        """What is known of ``key``, or ``None`` when nothing is stored there."""
        validate_key(key)
        return await asyncio.to_thread(self._stat, key)

    async def exists(self, key: str) -> bool:
        """Whether something is stored under ``key``."""
        return await self.stat(key) is not None

    async def delete(self, key: str) -> None:
        """Remove ``key`` and its sidecar; a missing key is not an error."""
        validate_key(key)
        await asyncio.to_thread(self._delete, key)

    async def list(self, prefix: str = "") -> builtins.list[ArtifactInfo]:
        """Every artifact whose key starts with ``prefix``, sorted by key."""
        validate_prefix(prefix)
        return await asyncio.to_thread(self._list, prefix)

    async def presigned_get_url(self, key: str, expires_s: int = 900) -> str:
        """A URL of the API service's signed route that downloads ``key``."""
        return self._presign("get", key, expires_s)

    async def presigned_put_url(self, key: str, expires_s: int = 900) -> str:
        """A URL of the API service's signed route that uploads ``key``."""
        return self._presign("put", key, expires_s)

    async def ping(self) -> bool:
        """True when ``root`` can be made and written to; never raises."""
        try:
            return await asyncio.to_thread(self._ping)
        except Exception:
            return False

    # -- paths ----------------------------------------------------------------------------

    def _object_path(self, key: str) -> Path:
        return self._objects.joinpath(*key.split("/"))

    def _meta_path(self, key: str) -> Path:
        parts = key.split("/")
        parts[-1] += ".json"
        return self._meta.joinpath(*parts)

    # -- blocking work (run in threads) ---------------------------------------------------

    def _presign(self, op: Literal["get", "put"], key: str, expires_s: int) -> str:
        validate_key(key)
        validate_expires(expires_s)
        expires = int(time.time()) + expires_s
        sig = compute_signature(self._secret, op, key, expires)
        return (
            f"{self.base_url}{SIGNED_ROUTE}{quote(key, safe='/')}"
            f"?op={op}&expires={expires}&sig={sig}"
        )

    def _put_file(self, key: str, path: Path, content_type: str) -> ArtifactInfo:
        with path.open("rb") as source:
            return self._put(key, iter(lambda: source.read(CHUNK_SIZE), b""), content_type)

    def _put(self, key: str, chunks: Iterable[bytes], content_type: str) -> ArtifactInfo:
        target = self._object_path(key)
        digest = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                digest.update(chunk)
                yield chunk

        try:
            st = _atomic_write(target, hashed(), in_store=True)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            other = self._collision(key)
            if other is None:
                raise  # not a clash between keys (e.g. the root itself is a file)
            raise ArtifactKeyError(
                key,
                f"collides with {other} in the local store, where a key cannot also be a "
                "folder of keys (like 'a' and 'a/b')",
            ) from exc
        sha256 = digest.hexdigest()
        sidecar = {
            "sha256": sha256,
            "content_type": content_type,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ino": st.st_ino,
        }
        _atomic_write(self._meta_path(key), (json.dumps(sidecar).encode(),), in_store=True)
        return ArtifactInfo(
            key=key,
            size=st.st_size,
            sha256=sha256,
            content_type=content_type,
            modified_at=_mtime(st),
        )

    def _collision(self, key: str) -> str | None:
        """What stored path keeps ``key`` from being written, if another key's."""
        if not self._objects.is_dir():
            return None
        parts = key.split("/")
        for depth in range(1, len(parts)):
            if self._objects.joinpath(*parts[:depth]).is_file():
                return f"key {'/'.join(parts[:depth])!r}"
        if self._object_path(key).is_dir():
            return f"keys under {key + '/'!r}"
        return None

    def _open_content(self, key: str) -> int:
        try:
            fd = os.open(self._object_path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ArtifactNotFoundError(key) from exc
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            # A folder of other keys is not an artifact itself.
            os.close(fd)
            raise ArtifactNotFoundError(key)
        return fd

    def _get_bytes(self, key: str) -> bytes:
        with open(self._open_content(key), "rb") as source:  # noqa: PTH123 - fd, not a path
            return source.read()

    def _get_file(self, key: str, dest: Path) -> None:
        with open(self._open_content(key), "rb") as source:  # noqa: PTH123 - fd, not a path
            _atomic_write(dest, iter(lambda: source.read(CHUNK_SIZE), b""), in_store=False)

    def _stat(self, key: str) -> ArtifactInfo | None:
        try:
            st = self._object_path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        return self._info(key, st)

    def _info(self, key: str, st: os.stat_result) -> ArtifactInfo:
        sha256: str | None = None
        content_type: str | None = None
        try:
            sidecar = json.loads(self._meta_path(key).read_bytes())
            if (
                sidecar.get("size") == st.st_size
                and sidecar.get("mtime_ns") == st.st_mtime_ns
                and sidecar.get("ino") == st.st_ino
            ):
                sha256 = sidecar.get("sha256")
                content_type = sidecar.get("content_type")
        except (OSError, ValueError, AttributeError):
            pass  # no usable sidecar: report what the file itself says
        return ArtifactInfo(
            key=key,
            size=st.st_size,
            sha256=sha256,
            content_type=content_type,
            modified_at=_mtime(st),
        )

    def _delete(self, key: str) -> None:
        target = self._object_path(key)
        try:
            if not stat_mod.S_ISREG(target.stat().st_mode):
                return
        except (FileNotFoundError, NotADirectoryError):
            return
        target.unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)
        # Empty folders would otherwise pile up, and would block a later put of a key that
        # names one of them ('a' after 'a/b' was deleted).
        _prune_empty_parents(target.parent, self._objects)
        _prune_empty_parents(self._meta_path(key).parent, self._meta)

    def _list(self, prefix: str) -> builtins.list[ArtifactInfo]:
        directory, _, _ = prefix.rpartition("/")
        base = self._objects.joinpath(*directory.split("/")) if directory else self._objects
        if not base.is_dir():
            return []
        found: list[ArtifactInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self._objects).as_posix()
            rel_prefix = "" if rel == "." else rel + "/"
            # Walk only folders that can hold a match: those inside the prefix, or on its path.
            dirnames[:] = sorted(
                name
                for name in dirnames
                if (rel_prefix + name + "/").startswith(prefix)
                or prefix.startswith(rel_prefix + name + "/")
            )
            for name in filenames:
                if name.startswith(RESERVED_SEGMENT_PREFIX):
                    continue
                key = rel_prefix + name
                if not key.startswith(prefix):
                    continue
                try:
                    st = Path(dirpath, name).stat()
                except FileNotFoundError:
                    continue  # deleted while we walked
                if stat_mod.S_ISREG(st.st_mode):
                    found.append(self._info(key, st))
        found.sort(key=lambda info: info.key)
        return found

    def _ping(self) -> bool:
        self._objects.mkdir(parents=True, exist_ok=True)
        self._meta.mkdir(parents=True, exist_ok=True)
        probe = self._objects / f"{RESERVED_SEGMENT_PREFIX}ping-{secrets.token_hex(8)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ping")
        finally:
            os.close(fd)
            probe.unlink()
        return True


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)


def _open_temp(directory: Path, in_store: bool) -> tuple[int, Path]:
    """Create and open a fresh temporary file in ``directory``, making the folder as needed."""
    for _ in range(_MKDIR_ATTEMPTS):
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{RESERVED_SEGMENT_PREFIX}{secrets.token_hex(8)}"
        try:
            # 0o666 lets the umask decide, as for any file the process makes.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileNotFoundError:
            if not in_store:
                raise
            continue  # a concurrent delete pruned the folder we just made
    raise FileNotFoundError(f"could not keep folder {directory} in place to write to it")


def _atomic_write(target: Path, chunks: Iterable[bytes], in_store: bool) -> os.stat_result:
    """Write ``chunks`` to ``target`` through a temp file and ``os.replace``; stat of the result.

    ``in_store``: ``target`` lies in the store, whose empty folders concurrent deletes prune.
    """
    fd, tmp = _open_temp(target.parent, in_store)
    try:
        with open(fd, "wb", closefd=True) as out:  # noqa: PTH123 - fd, not a path
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            st = os.fstat(out.fileno())
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return st


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some platforms cannot open folders, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune_empty_parents(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or already gone): nothing above it can be empty either
        directory = directory.parent
