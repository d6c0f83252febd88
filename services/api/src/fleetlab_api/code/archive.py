"""Code snapshot archives: checked member by member, then rewritten in one canonical form.

An upload is a gzip-compressed tar. Every member is checked before anything is stored: a
name that is absolute or climbs out of the root (``..``), a symbolic or hard link, a device
file or FIFO, or any other special member is refused, naming the member and why; so is an
archive that is not a gzip tar at all, or that passes the limits (its compressed size, the
total size of its files once unpacked — which stops gzip bombs, since the decompressed stream
is counted as it is read — and the number of members).

What is kept is rewritten canonically: regular files and folders only, sorted by path, owner
0, mtime 0, mode 0644 (0755 when any executable bit was set; folders 0755), gzip without a
name or time. The snapshot's digest is the SHA-256 of that canonical archive, so the same
files give the same digest however they were packed, and a snapshot is stored once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

CHUNK = 1 << 20
# A member's path: bytes of UTF-8, as most file systems allow.
MAX_PATH_BYTES = 1024
# tar headers (512 bytes each, more for long names) on top of the files' own bytes.
HEADER_ALLOWANCE = 4096


@dataclass(frozen=True)
class Limits:
    """What an archive may hold: compressed bytes, unpacked bytes, members."""

    max_bytes: int
    max_unpacked_bytes: int
    max_files: int


@dataclass(frozen=True)
class Entry:
    """One file of a snapshot."""

    path: str
    size: int
    executable: bool


class ArchiveError(ValueError):
    """The archive is refused: ``status`` (413 for limits, 422 otherwise) and why."""

    def __init__(self, message: str, status: int = 422, member: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.member = member


class _Counted(io.RawIOBase):
    """The decompressed stream, refused as soon as it passes ``limit`` bytes."""

    def __init__(self, source: gzip.GzipFile, limit: int, what: str) -> None:
        self._source = source
        self._limit = limit
        self._what = what
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        self.count += len(data)
        if self.count > self._limit:
            raise ArchiveError(self._what, 413)
        buffer[: len(data)] = data
        return len(data)


def member_path(name: str) -> str:
    """The member's path, normalised (``./a//b`` → ``a/b``; ``""`` for the root itself), or
    :class:`ArchiveError` naming it when it may not be unpacked."""
    if "\x00" in name:
        raise ArchiveError(f"archive member {name!r}: the name holds a NUL character", member=name)
    if "\\" in name:
        raise ArchiveError(
            f"archive member {name!r}: the name holds a backslash (paths are '/'-separated)",
            member=name,
        )
    if name.startswith("/"):
        raise ArchiveError(
            f"archive member {name!r}: an absolute path escapes the archive's root", member=name
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {name!r}: '..' escapes the archive's root", member=name)
    path = "/".join(parts)
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise ArchiveError(
            f"archive member {name[:80]!r}…: the path is longer than {MAX_PATH_BYTES} bytes",
            member=name,
        )
    return path


def member_kind_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member of this type may not be unpacked, or None for files and folders."""
    if member.isfile() or member.isdir():
        return None
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r}); links are not allowed"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r}); links are not allowed"
    if member.ischr() or member.isblk():
        return "is a device file; only regular files and folders are allowed"
    if member.isfifo():
        return "is a FIFO; only regular files and folders are allowed"
    return "is not a regular file or folder"


def _open_gzip_tar(source: IO[bytes], limits: Limits) -> tuple[tarfile.TarFile, _Counted]:
    head = source.read(2)
    source.seek(0)
    if head != b"\x1f\x8b":
        raise ArchiveError("not a gzip file: a code snapshot is a .tar.gz archive")
    counted = _Counted(
        gzip.GzipFile(fileobj=source, mode="rb"),
        limits.max_unpacked_bytes + limits.max_files * HEADER_ALLOWANCE,
        f"the archive unpacks to more than {limits.max_unpacked_bytes // (1 << 20)} MiB",
    )
    reader = io.BufferedReader(counted, CHUNK)
    try:
        return tarfile.open(fileobj=reader, mode="r|"), counted
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveError(f"the archive is damaged or cut short: {exc}") from None
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"not a tar archive inside the gzip: {exc}") from None


def _unpack(source: IO[bytes], limits: Limits, scratch: Path) -> tuple[dict[str, Entry], set[str]]:
    """Every file to ``scratch/<n>``: the files by path and the folders."""
    files: dict[str, Entry] = {}
    stored: dict[str, Path] = {}
    folders: set[str] = set()
    total = 0
    tar, _ = _open_gzip_tar(source, limits)
    count = 0
    try:
        for member in tar:
            count += 1
            if count > limits.max_files:
                raise ArchiveError(f"the archive holds more than {limits.max_files} members", 413)
            path = member_path(member.name)
            problem = member_kind_problem(member)
            if problem is not None:
                raise ArchiveError(f"archive member {member.name!r} {problem}", member=member.name)
            if not path:
                continue  # the root folder itself
            if path in files or (member.isfile() and path in folders):
                raise ArchiveError(
                    f"archive member {member.name!r} appears twice", member=member.name
                )
            if member.isdir():
                folders.add(path)
                continue
            total += member.size
            if total > limits.max_unpacked_bytes:
                raise ArchiveError(
                    f"the archive unpacks to more than "
                    f"{limits.max_unpacked_bytes // (1 << 20)} MiB",
                    413,
                )
            target = scratch / str(len(stored))
            data = tar.extractfile(member)
            assert data is not None
            with target.open("wb") as out:
                while chunk := data.read(CHUNK):
                    out.write(chunk)
            stored[path] = target
            files[path] = Entry(path, member.size, bool(member.mode & 0o111))
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveError(f"the archive is damaged or cut short: {exc}") from None
    finally:
        tar.close()
    _check_tree(files, folders)
    return files, folders


def _check_tree(files: dict[str, Entry], folders: set[str]) -> None:
    """A path cannot be both a file and a folder holding other paths."""
    for path in files:
        for parent in PurePosixPath(path).parents:
            name = str(parent)
            if name != "." and name in files:
                raise ArchiveError(
                    f"archive member {path!r} lies inside {name!r}, which is a file",
                    member=path,
                )
    for folder in folders:
        if folder in files:
            raise ArchiveError(f"archive member {folder!r} is both a file and a folder")


def _info(
    path: str, *, size: int = 0, folder: bool = False, executable: bool = False
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
    info.size = 0 if folder else size
    info.mode = 0o755 if folder or executable else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def canonicalize(source: IO[bytes], limits: Limits, dest: Path) -> tuple[str, list[Entry]]:
    """Check ``source`` (a seekable .tar.gz) and write its canonical form to ``dest``.

    Returns ``("sha256:<hex>", files sorted by path)``; raises :class:`ArchiveError`.
    """
    with tempfile.TemporaryDirectory(prefix="fleetlab-code-") as tmp:
        scratch = Path(tmp)
        files, folders = _unpack(source, limits, scratch)
        # Every folder that holds a file is listed too, so packing with or without folder
        # entries gives the same archive.
        for path in files:
            folders.update(str(p) for p in PurePosixPath(path).parents if str(p) != ".")
        order = {path: index for index, path in enumerate(files)}
        paths = sorted([*files, *folders])
        with dest.open("wb") as raw:
            with (
                gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz,
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                for path in paths:
                    if path in folders:
                        tar.addfile(_info(path, folder=True))
                        continue
                    entry = files[path]
                    with (scratch / str(order[path])).open("rb") as content:
                        tar.addfile(
                            _info(path, size=entry.size, executable=entry.executable), content
                        )
            raw.flush()
            os.fsync(raw.fileno())
    digest = hashlib.sha256()
    with dest.open("rb") as done:
        while chunk := done.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}", [files[p] for p in sorted(files)]


def read_member(archive: bytes, path: str) -> bytes | None:
    """One file's content from a stored (canonical) archive, or None when it has no such file."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        try:
            member = tar.getmember(path)
        except KeyError:
            return None
        if not member.isfile():
            return None
        data = tar.extractfile(member)
        return None if data is None else data.read()
