"""Artifacts in an S3 bucket (MinIO, AWS S3 or anything speaking the protocol).

Uses the ``minio`` client, imported only when a store is made so a process without the ``s3``
extra can still use the local store. Every blocking call runs in a worker thread.

- The sha256 of the content is computed before upload and stored as the object's user metadata
  ``sha256`` (header ``x-amz-meta-sha256``); ``stat`` reads it back. ``list`` asks for user
  metadata in the listing, which MinIO returns and AWS S3 and moto do not: there ``list``
  reports ``sha256`` and ``content_type`` as ``None`` (call ``stat`` for them). Objects
  uploaded through a presigned PUT URL have no ``sha256``.
- The bucket is made lazily, before the first write of each store (and again if a write finds
  it gone); call :meth:`S3ArtifactStore.ensure_bucket` to make it up front. Reads of a bucket
  that does not exist see no artifacts.
- Files are uploaded with ``put_object`` from an open file, so large files stream in parts
  (multipart upload above 5 MiB, three parts in parallel).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import io
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from fleetlab_common.artifacts.base import (
    CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    RESERVED_SEGMENT_PREFIX,
    ArtifactConfigError,
    ArtifactInfo,
    ArtifactNotFoundError,
    validate_expires,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from minio import Minio

T = TypeVar("T")

SHA256_METADATA = "sha256"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound"})
# Seconds: connecting should be quick on any network a fleet runs on; a read may wait on a
# large part being stored.
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 300.0
# The health probe answers fast and never retries: a dead endpoint must read as dead at once.
_PROBE_CONNECT_TIMEOUT_S = 2.0
_PROBE_READ_TIMEOUT_S = 5.0
# Above the size of asyncio's default thread pool, so threads never wait for a connection.
_POOL_SIZE = 32


def parse_endpoint(endpoint: str, secure: bool = False) -> tuple[str, bool]:
    """``(host:port, secure)`` from ``host:port`` or an ``http(s)://host:port`` URL.

    A URL's scheme decides ``secure``; a bare ``host:port`` keeps the ``secure`` given.
    """
    endpoint = endpoint.strip()
    if not endpoint:
        raise ArtifactConfigError("S3 endpoint is empty")
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise ArtifactConfigError(
                f"S3 endpoint {endpoint!r}: scheme must be http or https, not {parts.scheme!r}"
            )
        if not parts.netloc or "@" in parts.netloc:
            raise ArtifactConfigError(
                f"S3 endpoint {endpoint!r}: expected http(s)://host[:port] with no credentials"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ArtifactConfigError(
                f"S3 endpoint {endpoint!r}: must have no path, query or fragment "
                "(the bucket is configured separately)"
            )
        return parts.netloc, parts.scheme == "https"
    if "/" in endpoint or "@" in endpoint:
        raise ArtifactConfigError(
            f"S3 endpoint {endpoint!r}: expected host:port or http(s)://host:port"
        )
    return endpoint, secure


def _http_client(connect_s: float, read_s: float, retry: bool) -> Any:
    import certifi
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_s, read=read_s),
        maxsize=_POOL_SIZE,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=(
            urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
            if retry
            else False
        ),
    )


def _error_code(exc: BaseException) -> str | None:
    from minio.error import S3Error

    return exc.code if isinstance(exc, S3Error) else None


def _metadata_value(metadata: Mapping[str, Any] | None, name: str) -> str | None:
    """A user-metadata value by name, whatever the case or ``x-amz-meta-`` prefix."""
    if not metadata:
        return None
    wanted = {name.lower(), f"x-amz-meta-{name.lower()}"}
    for key, raw in metadata.items():
        if str(key).lower() in wanted:
            value = (raw[0] if raw else None) if isinstance(raw, list | tuple) else raw
            return None if value is None else str(value)
    return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class S3ArtifactStore:
    """An :class:`~fleetlab_common.artifacts.ArtifactStore` over one S3 bucket.

    ``endpoint`` is ``host:port`` (with ``secure`` choosing HTTPS) or ``http(s)://host:port``
    (the scheme decides). ``region`` is given to the client so it never has to look the
    bucket's region up, which also makes presigning a local computation.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        secure: bool = False,
    ) -> None:
        from minio import Minio

        host, self.secure = parse_endpoint(endpoint, secure)
        self.endpoint = host
        self.bucket = bucket
        self.region = region

        def client(http: Any) -> Minio:
            return Minio(
                host,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=self.secure,
                region=region,
                http_client=http,
            )

        self._client = client(_http_client(_CONNECT_TIMEOUT_S, _READ_TIMEOUT_S, retry=True))
        self._probe = client(
            _http_client(_PROBE_CONNECT_TIMEOUT_S, _PROBE_READ_TIMEOUT_S, retry=False)
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"S3ArtifactStore({scheme}://{self.endpoint}, bucket={self.bucket!r})"

    # -- the interface --------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Make the bucket if it does not exist yet (writes also do this on their own)."""
        await asyncio.to_thread(self._ensure_bucket, False)

    async def put_bytes(
        self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ArtifactInfo:
        """Store ``data`` under ``key`` with its sha256 as user metadata."""
        validate_key(key)
        return await asyncio.to_thread(self._put_bytes, key, bytes(data), content_type)

    async def put_file(
        self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ArtifactInfo:
        """Upload the file at ``path`` (multipart when large), its sha256 as user metadata."""
        validate_key(key)
        return await asyncio.to_thread(self._put_file, key, Path(path), content_type)

    async def get_bytes(self, key: str) -> bytes:
        """The whole content of ``key``."""
        validate_key(key)
        return await asyncio.to_thread(self._get_bytes, key)

    async def get_file(self, key: str, dest: Path) -> None:
        """Download ``key`` to ``dest`` (atomically; parent folders are made)."""
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
        """Remove ``key``; a missing key (or bucket) is not an error."""
        validate_key(key)
        await asyncio.to_thread(self._delete, key)

    async def list(self, prefix: str = "") -> builtins.list[ArtifactInfo]:
        """Every artifact whose key starts with ``prefix``, sorted by key."""
        validate_prefix(prefix)
        return await asyncio.to_thread(self._list, prefix)

    async def presigned_get_url(self, key: str, expires_s: int = 900) -> str:
        """An S3 presigned GET URL for ``key``."""
        validate_key(key)
        validate_expires(expires_s)
        return await asyncio.to_thread(
            self._client.presigned_get_object,
            self.bucket,
            key,
            expires=timedelta(seconds=expires_s),
        )

    async def presigned_put_url(self, key: str, expires_s: int = 900) -> str:
        """An S3 presigned PUT URL for ``key`` (the bucket is made first if needed).

        An object uploaded through it carries no ``sha256`` metadata.
        """
        validate_key(key)
        validate_expires(expires_s)

        def presign() -> str:
            self._ensure_bucket(False)
            url: str = self._client.presigned_put_object(
                self.bucket, key, expires=timedelta(seconds=expires_s)
            )
            return url

        return await asyncio.to_thread(presign)

    async def ping(self) -> bool:
        """True when the endpoint answers and the credentials may query the bucket.

        A bucket that does not exist yet still counts as usable: it is made on first write.
        Never raises; a dead endpoint answers ``False`` within a few seconds, without retries.
        """
        try:
            await asyncio.to_thread(self._probe.bucket_exists, self.bucket)
        except Exception:
            return False
        return True

    # -- blocking work (run in threads) ---------------------------------------------------

    def _ensure_bucket(self, force: bool) -> None:
        if self._bucket_ready and not force:
            return
        with self._bucket_lock:
            if self._bucket_ready and not force:
                return
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except Exception as exc:
                    # Another process made it between our check and our request.
                    if _error_code(exc) != "BucketAlreadyOwnedByYou":
                        raise
            self._bucket_ready = True

    def _write(self, upload: Callable[[], T]) -> T:
        """Run ``upload`` with the bucket in place, remaking it once if it vanished."""
        self._ensure_bucket(False)
        try:
            return upload()
        except Exception as exc:
            if _error_code(exc) != "NoSuchBucket":
                raise
        self._ensure_bucket(True)
        return upload()

    def _put_bytes(self, key: str, data: bytes, content_type: str) -> ArtifactInfo:
        sha256 = hashlib.sha256(data).hexdigest()

        def upload() -> Any:
            return self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={SHA256_METADATA: sha256},
            )

        result = self._write(upload)
        return self._written(key, len(data), sha256, content_type, result)

    def _put_file(self, key: str, path: Path, content_type: str) -> ArtifactInfo:
        # S3 takes user metadata with the first request, so the hash needs a pass of its own.
        sha256 = _sha256_file(path)
        size = path.stat().st_size

        def upload() -> Any:
            with path.open("rb") as source:
                return self._client.put_object(
                    self.bucket,
                    key,
                    source,
                    size,
                    content_type=content_type,
                    metadata={SHA256_METADATA: sha256},
                )

        result = self._write(upload)
        return self._written(key, size, sha256, content_type, result)

    def _written(
        self, key: str, size: int, sha256: str, content_type: str, result: Any
    ) -> ArtifactInfo:
        modified = getattr(result, "last_modified", None)
        if modified is None:
            from email.utils import parsedate_to_datetime

            headers = getattr(result, "http_headers", None) or {}
            date = headers.get("last-modified") or headers.get("date")
            with contextlib.suppress(TypeError, ValueError):
                modified = parsedate_to_datetime(date) if date else None
        return ArtifactInfo(
            key=key,
            size=size,
            sha256=sha256,
            content_type=content_type,
            modified_at=_utc(modified),
        )

    def _get_bytes(self, key: str) -> bytes:
        response = self._open(key)
        try:
            data: bytes = response.read()
            return data
        finally:
            response.close()
            response.release_conn()

    def _get_file(self, key: str, dest: Path) -> None:
        response = self._open(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f"{RESERVED_SEGMENT_PREFIX}{secrets.token_hex(8)}"
            try:
                with tmp.open("wb") as out:
                    for chunk in response.stream(CHUNK_SIZE):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                tmp.replace(dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            response.close()
            response.release_conn()

    def _open(self, key: str) -> Any:
        try:
            return self._client.get_object(self.bucket, key)
        except Exception as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ArtifactNotFoundError(key) from exc
            raise

    def _stat(self, key: str) -> ArtifactInfo | None:
        try:
            obj = self._client.stat_object(self.bucket, key)
        except Exception as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return None
            raise
        return ArtifactInfo(
            key=key,
            size=int(obj.size or 0),
            sha256=_metadata_value(obj.metadata, SHA256_METADATA),
            content_type=obj.content_type,
            modified_at=_utc(obj.last_modified),
        )

    def _delete(self, key: str) -> None:
        try:
            self._client.remove_object(self.bucket, key)
        except Exception as exc:
            if _error_code(exc) not in _NOT_FOUND_CODES:
                raise

    def _list(self, prefix: str) -> builtins.list[ArtifactInfo]:
        found: list[ArtifactInfo] = []
        try:
            for obj in self._client.list_objects(
                self.bucket, prefix=prefix or None, recursive=True, include_user_meta=True
            ):
                if obj.is_dir:
                    continue
                found.append(
                    ArtifactInfo(
                        key=obj.object_name,
                        size=int(obj.size or 0),
                        sha256=_metadata_value(obj.metadata, SHA256_METADATA),
                        content_type=_metadata_value(obj.metadata, "content-type")
                        or obj.content_type,
                        modified_at=_utc(obj.last_modified),
                    )
                )
        except Exception as exc:
            if _error_code(exc) != "NoSuchBucket":
                raise
            return []
        found.sort(key=lambda info: info.key)
        return found
