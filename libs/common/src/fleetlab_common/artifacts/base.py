"""What every artifact backend shares: the interface, the info model, errors and key rules."""

from __future__ import annotations

import builtins
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# S3 caps object names at 1024 bytes of UTF-8; holding every backend to it keeps keys portable.
MAX_KEY_BYTES = 1024
# S3 presigned URLs live at most 7 days; the local backend keeps the same bound so a caller
# that works on one backend works on the other.
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
# The local backend writes temporary files next to their target under this prefix; no key
# segment may use it, so a half-written file can never be mistaken for an artifact.
RESERVED_SEGMENT_PREFIX = ".fleetlab-tmp-"
# Chunk size for streaming file copies and hashing.
CHUNK_SIZE = 1024 * 1024


class ArtifactInfo(BaseModel):
    """What a backend knows about one stored artifact.

    ``sha256`` is the hex SHA-256 of the content, computed when it was put through the store;
    it is ``None`` where the store cannot vouch for it (an object written through a presigned
    PUT URL or by hand, or an S3 listing from a server that omits user metadata).
    ``modified_at`` is timezone-aware (UTC).
    """

    model_config = ConfigDict(frozen=True)

    key: str
    size: int
    sha256: str | None
    content_type: str | None
    modified_at: datetime


class ArtifactError(Exception):
    """Base of every error the artifact store raises on purpose."""


class ArtifactKeyError(ArtifactError, ValueError):
    """A key (or list prefix) the store refuses; ``key`` and ``reason`` say which and why."""

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid artifact key {key!r}: {reason}")


class ArtifactNotFoundError(ArtifactError, KeyError):
    """No artifact is stored under ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"artifact {key!r} not found")

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument: keep the plain message.
        return str(self.args[0])


class ArtifactSignatureError(ArtifactError, PermissionError):
    """A presigned URL that does not authorise the request (bad signature, expired, wrong op)."""


class ArtifactConfigError(ArtifactError, ValueError):
    """The artifact settings cannot make a working store."""


def _key_problem(key: object) -> str | None:
    """Why ``key`` is not a valid key, or ``None`` when it is."""
    if not isinstance(key, str):
        return f"must be a str, not {type(key).__name__}"
    if not key:
        return "is empty"
    if "\x00" in key:
        return "contains a NUL character"
    if "\\" in key:
        return "contains a backslash (keys are '/'-separated)"
    if key.startswith("/"):
        return "is absolute (starts with '/'); keys are relative"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "is not encodable as UTF-8"
    if len(encoded) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes of UTF-8"
    for segment in key.split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


def _segment_problem(segment: str) -> str | None:
    if segment == "..":
        return "contains a '..' segment"
    if segment == ".":
        return "contains a '.' segment"
    if not segment:
        return "contains an empty segment (a trailing '/' or '//')"
    if segment.startswith(RESERVED_SEGMENT_PREFIX):
        return f"has a segment starting with the reserved prefix {RESERVED_SEGMENT_PREFIX!r}"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` when it is a valid artifact key, else raise :class:`ArtifactKeyError`.

    A key is a relative, '/'-separated name: not empty, not absolute, no ``..``, ``.`` or
    empty segments, no backslash, no NUL, at most 1024 bytes of UTF-8, and no segment that
    starts with the reserved temporary-file prefix.
    """
    problem = _key_problem(key)
    if problem is not None:
        raise ArtifactKeyError(key, problem)
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` when it is a valid list prefix, else raise :class:`ArtifactKeyError`.

    A prefix matches keys by plain string prefix (as in S3), so its last segment may be partial
    or empty (``"runs/1"`` matches ``runs/1/a`` and ``runs/10/b``; ``"runs/"`` matches every key
    under ``runs``); its directory part must be made of valid key segments.
    """
    if not isinstance(prefix, str):
        raise ArtifactKeyError(prefix, f"must be a str, not {type(prefix).__name__}")
    if not prefix:
        return prefix
    if "\x00" in prefix:
        raise ArtifactKeyError(prefix, "contains a NUL character")
    if "\\" in prefix:
        raise ArtifactKeyError(prefix, "contains a backslash (keys are '/'-separated)")
    if prefix.startswith("/"):
        raise ArtifactKeyError(prefix, "is absolute (starts with '/'); keys are relative")
    directory, _, _ = prefix.rpartition("/")
    if directory:
        for segment in directory.split("/"):
            problem = _segment_problem(segment)
            if problem is not None:
                raise ArtifactKeyError(prefix, problem)
    return prefix


def validate_expires(expires_s: int) -> int:
    """Return ``expires_s`` when it is a usable presigned-URL lifetime, else raise ValueError."""
    if not 1 <= expires_s <= MAX_PRESIGN_EXPIRES_S:
        raise ValueError(
            f"expires_s must be between 1 and {MAX_PRESIGN_EXPIRES_S} seconds, not {expires_s}"
        )
    return expires_s


@runtime_checkable
class ArtifactStore(Protocol):
    """Where experiment inputs and outputs are kept: a local directory or an S3 bucket.

    Every method validates its key first (:func:`validate_key`) and raises
    :class:`ArtifactKeyError` for a bad one. Methods that read a missing key raise
    :class:`ArtifactNotFoundError`; ``stat`` returns ``None`` instead and ``delete`` does
    nothing. Presigned URLs let a holder of no storage credential (an agent) move one
    object within ``expires_s`` seconds.
    """

    async def put_bytes(
        self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ArtifactInfo:
        """Store ``data`` under ``key``, replacing what was there."""
        ...

    async def put_file(
        self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ArtifactInfo:
        """Store the file at ``path`` under ``key``, streaming it (any size)."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The whole content of ``key``."""
        ...

    async def get_file(self, key: str, dest: Path) -> None:
        """Write the content of ``key`` to ``dest`` (atomically; parent folders are made)."""
        ...

    async def stat(self, key: str) -> ArtifactInfo | None:
        """What is known of ``key``, or ``None`` when nothing is stored there."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether something is stored under ``key``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...

    async def list(self, prefix: str = "") -> builtins.list[ArtifactInfo]:
        """Every artifact whose key starts with ``prefix``, sorted by key."""
        ...

    async def presigned_get_url(self, key: str, expires_s: int = 900) -> str:
        """A URL that downloads ``key`` with a plain GET for ``expires_s`` seconds."""
        ...

    async def presigned_put_url(self, key: str, expires_s: int = 900) -> str:
        """A URL that uploads ``key`` with a plain PUT of the body for ``expires_s`` seconds."""
        ...

    async def ping(self) -> bool:
        """True when the backend is reachable and usable; never raises."""
        ...
