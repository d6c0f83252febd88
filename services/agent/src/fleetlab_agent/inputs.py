"""Inputs (MachineLabs' first stage): fetched into ``inputs/<name>`` before the process starts.

Each URL is fetched once into the agent's content cache (``<agent home>/cache``) and linked
into every run that names it, with its sha256 recorded. A failed download fails the run with
the URL and the reason; a download over ``max_bytes`` is refused.

The agent's two content caches (these inputs and the code snapshots of
:mod:`fleetlab_agent.code`) share one size bound, a :class:`CacheBound`
(``FLEETLAB_AGENT__CACHE_MAX_MB``). After each download the least recently used entries go
until both caches together fit under it. Every hit marks its entry used (its marker file's
modification time). An entry is pinned from the moment a run starts staging it until the
run has it (inputs linked, a snapshot unpacked), so neither a download nor an unpack in
progress loses its file; a pinned entry stays even when it alone is over the bound. Inputs
are hard links in the runs' ``inputs/``, so a run already staged keeps its files when their
cache entry goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from fleetlab_common.events import StagedInput
from fleetlab_common.log import get_logger
from fleetlab_common.runspec import Input

log = get_logger(__name__)

# A cache entry's files: ``<key>`` and ``<key>.<suffix>`` (its digest, a download in progress).
_ENTRY_FILE = re.compile(r"^([0-9a-f]{64})(\..+)?$")


class InputError(RuntimeError):
    """An input could not be staged; the message names it, its URL and why."""


# Where to download an input that is not a plain URL (an artifact://): (download URL, cache
# key). Raises InputError with why it cannot be had.
Resolve = Callable[[Input], Awaitable[tuple[str, str]]]


@dataclass(frozen=True)
class CacheEntry:
    """One key's files in a cache folder: their size together and when the entry was last
    used (the newest modification time of its files, in nanoseconds)."""

    key: str
    files: tuple[Path, ...]
    size: int
    used_ns: int


class ContentCache:
    """A folder of entries by key, each downloaded once. Subclasses fetch; this keeps the
    keys in use (pinned) and the per-key locks, and marks entries used for the bound."""

    def __init__(self, root: Path, bound: CacheBound | None) -> None:
        self.root = root
        self.bound = bound
        self._locks: dict[str, asyncio.Lock] = {}
        self._pins: Counter[str] = Counter()
        if bound is not None:
            bound.add(self)

    @contextlib.contextmanager
    def pinned(self, key: str) -> Iterator[asyncio.Lock]:
        """Keep ``key`` from eviction while a run stages it; yields the lock that serialises
        its download. Pins nest (two runs may stage the same entry at once)."""
        self._pins[key] += 1
        try:
            yield self._locks.setdefault(key, asyncio.Lock())
        finally:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]

    def in_use(self, key: str) -> bool:
        return key in self._pins

    async def download(
        self,
        http: httpx.AsyncClient,
        url: str,
        target: Path,
        max_bytes: int,
        error: type[Exception],
        *,
        answered: str,
        failed: str,
    ) -> str:
        """Stream ``url`` into ``target`` (through ``<target>.part``, so a half download
        never passes for an entry), at most ``max_bytes``; returns its sha256 (hex). Failures
        raise ``error``: ``answered`` (with ``{status}``) for a status other than 200,
        ``failed`` (with ``{reason}``) when the transfer broke."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        digest = hashlib.sha256()
        size = 0
        try:
            async with http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise error(answered.format(status=response.status_code))
                with tmp.open("wb") as f:
                    async for chunk in response.aiter_bytes(1 << 20):
                        size += len(chunk)
                        if size > max_bytes:
                            raise error(f"larger than the limit of {max_bytes} bytes")
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise error(failed.format(reason=str(exc) or type(exc).__name__)) from None
        except error:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        return digest.hexdigest()

    def used(self, marker: Path) -> None:
        """Mark an entry used now: its marker file's modification time."""
        if self.bound is not None:
            self.bound.stamp(marker)

    def downloaded(self) -> None:
        """A download landed: evict what the bound says must go (the new entry is pinned)."""
        if self.bound is not None:
            self.bound.trim()

    def entries(self) -> list[CacheEntry]:
        """Every entry in the folder, with its files; files of other names are not ours."""
        found: dict[str, list[tuple[Path, int, int]]] = {}
        try:
            listing = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for item in listing:
            match = _ENTRY_FILE.match(item.name)
            if match is None:
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.setdefault(match.group(1), []).append(
                (Path(item.path), st.st_size, st.st_mtime_ns)
            )
        return [
            CacheEntry(
                key=key,
                files=tuple(path for path, _, _ in files),
                size=sum(size for _, size, _ in files),
                used_ns=max(mtime for _, _, mtime in files),
            )
            for key, files in found.items()
        ]

    def evict(self, entry: CacheEntry) -> None:
        """Remove an entry no run is staging (the caller checked ``in_use``)."""
        # The main file first: a lone marker left by a crash reads as a miss and is fetched.
        for path in sorted(entry.files, key=lambda p: len(p.name)):
            path.unlink(missing_ok=True)
        lock = self._locks.get(entry.key)
        if lock is not None and not lock.locked():
            del self._locks[entry.key]


class CacheBound:
    """The agent's content caches together hold at most ``max_bytes``: :meth:`trim` evicts the
    least recently used entries that no run is staging until they fit.

    Everything here runs in the agent's event loop without awaiting, so no run can pin an
    entry between the check and the removal.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.caches: list[ContentCache] = []
        self.evicted = 0
        self._last_ns = 0

    def add(self, cache: ContentCache) -> None:
        self.caches.append(cache)

    def stamp(self, path: Path) -> None:
        """Set ``path``'s modification time to now, strictly after the previous stamp (file
        times from the kernel's coarse clock could tie)."""
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, ns=(now, now))

    def trim(self) -> int:
        """Evict least recently used entries until the caches fit; the bytes they still hold
        (over the bound only when what is left is pinned)."""
        entries = [(entry, cache) for cache in self.caches for entry in cache.entries()]
        total = sum(entry.size for entry, _ in entries)
        for entry, cache in sorted(entries, key=lambda pair: pair[0].used_ns):
            if total <= self.max_bytes:
                break
            if cache.in_use(entry.key):
                continue
            cache.evict(entry)
            total -= entry.size
            self.evicted += 1
            log.info("agent.cache_evicted", cache=str(cache.root), key=entry.key, size=entry.size)
        return total


class InputCache(ContentCache):
    """Downloads by URL, kept on the agent so the same input is fetched once."""

    def __init__(self, root: Path, max_bytes: int, bound: CacheBound | None = None) -> None:
        super().__init__(root, bound)
        self.max_bytes = max_bytes

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / key, self.root / f"{key}.sha256"

    async def _download(self, client: httpx.AsyncClient, url: str, target: Path) -> None:
        sha256 = await self.download(
            client,
            url,
            target,
            self.max_bytes,
            InputError,
            answered="the server answered {status}",
            failed="{reason}",
        )
        target.with_suffix(".sha256").write_text(sha256)

    async def stage(
        self,
        client: httpx.AsyncClient,
        item: Input,
        inputs_dir: Path,
        resolve: Resolve | None = None,
    ) -> StagedInput:
        """Put ``item`` at ``inputs_dir/<name>``, fetching it only if the cache lacks it.
        ``resolve`` turns a URL that is not fetched as it is (an artifact://) into a
        short-lived download URL and the key it is cached under."""
        url, key = item.url, item.url
        if resolve is not None:
            try:
                url, key = await resolve(item)
            except InputError as exc:
                raise InputError(
                    f"input {item.name!r}: could not fetch {item.url}: {exc}"
                ) from None
        entry = hashlib.sha256(key.encode()).hexdigest()
        cached, digest_file = self._paths(entry)
        hit = True
        with self.pinned(entry) as lock:
            async with lock:
                if not cached.exists() or not digest_file.exists():
                    hit = False
                    try:
                        await self._download(client, url, cached)
                    except InputError as exc:
                        raise InputError(
                            f"input {item.name!r}: could not fetch {item.url}: {exc}"
                        ) from None
                self.used(digest_file)
                if not hit:
                    self.downloaded()
            dest = inputs_dir / item.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.unlink(missing_ok=True)
            try:
                os.link(cached, dest)  # no copy: the run reads the cache's file
            except OSError:
                shutil.copyfile(cached, dest)
            with contextlib.suppress(OSError):
                dest.chmod(0o444)  # a shared cached file must not be changed by one run
            sha256 = digest_file.read_text().strip()
        return StagedInput(
            name=item.name,
            url=item.url,
            sha256=sha256,
            size=dest.stat().st_size,
            cached=hit,
        )
