"""Code snapshots: fetched once per digest, unpacked safely into a run's working directory.

The run spec names a snapshot by digest (``sha256:<hex>`` of its canonical archive). Before
the process starts, the agent asks the API over NATS (``rpc.api.code.presign``) for a
short-lived download URL — it holds no storage credential — downloads the archive into its
content cache (``<agent home>/code-cache/<hex>.tar.gz``; a digest is fetched once per agent)
and checks the download against the digest. It then unpacks it into the fresh working
directory, beside ``inputs/`` and ``outputs/``, so ``python train.py`` finds ``train.py``.
The cache shares the agent's size bound with the inputs' (see :mod:`fleetlab_agent.inputs`):
a snapshot is pinned from its fetch to the end of its unpacking, and each use marks it used.

The API checked the archive when it was uploaded; the agent checks it again as it unpacks
(it trusts no file it did not make): only regular files and folders, no absolute path, no
``..``, no links, devices or FIFOs, nothing written through a link, no file written twice,
and bounded sizes (``MAX_ARCHIVE_BYTES`` downloaded, ``MAX_UNPACKED_BYTES`` unpacked,
``MAX_FILES`` members). A snapshot that cannot be fetched or unpacked fails the run with the
digest and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import re
import stat
import tarfile
import zlib
from pathlib import Path

import httpx
from faststream.nats import NatsBroker

from fleetlab_agent.inputs import CacheBound, ContentCache
from fleetlab_common.events import Rpc
from fleetlab_common.log import get_logger

log = get_logger(__name__)

# The API's own limits are lower (100 MiB / 1 GiB / 50,000 by default); these only bound
# what a damaged or forged archive can make the agent do.
MAX_ARCHIVE_BYTES = 1 << 30
MAX_UNPACKED_BYTES = 4 << 30
MAX_FILES = 200_000
CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class CodeError(RuntimeError):
    """A snapshot could not be staged; the message names the digest and why."""


class _Counted(io.RawIOBase):
    """A stream refused once more than ``limit`` bytes came out of it."""

    def __init__(self, source: gzip.GzipFile, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        self.count += len(data)
        if self.count > self._limit:
            raise CodeError(f"it unpacks to more than {self._limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def _safe_path(name: str) -> str:
    """The member's normalised relative path ("" for the root), or why it is refused."""
    if "\x00" in name or "\\" in name:
        raise CodeError(f"member {name!r}: the name holds a NUL or a backslash")
    if name.startswith("/"):
        raise CodeError(f"member {name!r}: an absolute path escapes the working directory")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CodeError(f"member {name!r}: '..' escapes the working directory")
    return "/".join(parts)


def _kind_problem(member: tarfile.TarInfo) -> str | None:
    if member.isfile() or member.isdir():
        return None
    if member.issym() or member.islnk():
        return "is a link"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    return "is not a regular file or folder"


def _folder(root: Path, relative: str) -> Path:
    """Make ``root/relative`` folder by folder, refusing to pass through anything but a real
    folder (a link planted by anyone would lead out of the working directory)."""
    here = root
    for part in relative.split("/") if relative else []:
        here = here / part
        with contextlib.suppress(FileExistsError):
            here.mkdir(0o755)
        mode = os.lstat(here).st_mode
        if not stat.S_ISDIR(mode):
            raise CodeError(f"{relative!r}: {here.name!r} exists and is not a folder")
    return here


def unpack(
    archive: Path,
    dest: Path,
    *,
    max_unpacked: int = MAX_UNPACKED_BYTES,
    max_files: int = MAX_FILES,
) -> list[str]:
    """Unpack a snapshot's ``.tar.gz`` into ``dest`` (which exists); the files written.

    Raises :class:`CodeError` naming the member at fault; what was written before stays
    (the run fails and its working directory is not used).
    """
    written: list[str] = []
    total = 0
    with archive.open("rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raise CodeError("not a gzip file")
        raw.seek(0)
        counted = _Counted(gzip.GzipFile(fileobj=raw, mode="rb"), max_unpacked + max_files * 4096)
        try:
            with tarfile.open(fileobj=io.BufferedReader(counted, CHUNK), mode="r|") as tar:
                for count, member in enumerate(tar, start=1):
                    if count > max_files:
                        raise CodeError(f"it holds more than {max_files} members")
                    path = _safe_path(member.name)
                    problem = _kind_problem(member)
                    if problem is not None:
                        raise CodeError(f"member {member.name!r} {problem}")
                    if not path:
                        continue
                    if member.isdir():
                        _folder(dest, path)
                        continue
                    total += member.size
                    if total > max_unpacked:
                        raise CodeError(f"it unpacks to more than {max_unpacked} bytes")
                    parent, _, name = path.rpartition("/")
                    target = _folder(dest, parent) / name
                    mode = 0o755 if member.mode & 0o111 else 0o644
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                    try:
                        fd = os.open(target, flags, mode)
                    except FileExistsError:
                        raise CodeError(
                            f"member {member.name!r}: {path!r} exists already (written twice, "
                            "or it clashes with inputs/ or outputs/)"
                        ) from None
                    content = tar.extractfile(member)
                    assert content is not None
                    with os.fdopen(fd, "wb") as out:
                        while chunk := content.read(CHUNK):
                            out.write(chunk)
                        os.fchmod(out.fileno(), mode)  # whatever the umask took away
                    written.append(path)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise CodeError(f"the archive is damaged: {exc}") from None
    return written


class CodeCache(ContentCache):
    """Snapshots by digest, kept on the agent so each is downloaded once."""

    def __init__(
        self, root: Path, max_bytes: int = MAX_ARCHIVE_BYTES, bound: CacheBound | None = None
    ) -> None:
        super().__init__(root, bound)
        self.max_bytes = max_bytes
        self.downloads = 0

    @staticmethod
    def _hex(digest: str) -> str:
        match = _DIGEST.match(digest)
        if match is None:
            raise CodeError(f"code snapshot {digest!r}: not a sha256:<hex> digest")
        return match.group(1)

    def path(self, digest: str) -> Path:
        return self.root / f"{self._hex(digest)}.tar.gz"

    async def _url(self, broker: NatsBroker, digest: str) -> str:
        answer: object = None
        for backoff in (0.2, 1.0, 3.0, None):
            try:
                reply = await broker.request({"digest": digest}, Rpc.PRESIGN_CODE, timeout=10)
                answer = await reply.decode()
                break
            except Exception as exc:  # the API or NATS is away for now
                if backoff is None:
                    raise CodeError(f"could not get a download URL from the API: {exc!r}") from None
                await asyncio.sleep(backoff)
        if not isinstance(answer, dict):
            raise CodeError("the API gave an unexpected answer")
        if answer.get("error"):
            raise CodeError(str(answer["error"]))
        url = answer.get("url")
        if not isinstance(url, str):
            raise CodeError("the API gave no download URL")
        return url

    async def _download(self, http: httpx.AsyncClient, url: str, digest: str, target: Path) -> None:
        sha256 = await self.download(
            http,
            url,
            target,
            self.max_bytes,
            CodeError,
            answered="the download answered {status}",
            failed="the download failed: {reason}",
        )
        if f"sha256:{sha256}" != digest:
            with contextlib.suppress(FileNotFoundError):
                os.remove(target)  # noqa: PTH107  (the async check flags Path.unlink here)
            raise CodeError(f"the download does not match its digest (got sha256:{sha256})")
        self.downloads += 1

    async def fetch(self, broker: NatsBroker, http: httpx.AsyncClient, digest: str) -> Path:
        """The snapshot's archive in the cache, downloaded if the cache lacks it."""
        target = self.path(digest)
        with self.pinned(self._hex(digest)) as lock:
            async with lock:
                fetched = not target.exists()
                if fetched:
                    try:
                        url = await self._url(broker, digest)
                        await self._download(http, url, digest, target)
                    except CodeError as exc:
                        raise CodeError(f"code snapshot {digest}: {exc}") from None
                    log.info("code.fetched", digest=digest, size=target.stat().st_size)
                self.used(target)
                if fetched:
                    self.downloaded()
        return target

    async def stage(
        self, broker: NatsBroker, http: httpx.AsyncClient, digest: str, workdir: Path
    ) -> list[str]:
        """Fetch (or reuse) the snapshot and unpack it into ``workdir``; the files written."""
        with self.pinned(self._hex(digest)):  # until unpacked: no eviction under the reader
            archive = await self.fetch(broker, http, digest)
            try:
                return await asyncio.to_thread(unpack, archive, workdir)
            except CodeError as exc:
                raise CodeError(f"code snapshot {digest}: cannot unpack: {exc}") from None
