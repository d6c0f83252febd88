"""Inputs (MachineLabs' first stage): fetched into ``inputs/<name>`` before the process starts.

Each URL is fetched once into the agent's content cache (``<agent home>/cache``) and linked
into every run that names it, with its sha256 recorded. A failed download fails the run with
the URL and the reason; a download over ``max_bytes`` is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from fleetlab_common.events import StagedInput
from fleetlab_common.runspec import Input


class InputError(RuntimeError):
    """An input could not be staged; the message names it, its URL and why."""


# Where to download an input that is not a plain URL (an artifact://): (download URL, cache
# key). Raises InputError with why it cannot be had.
Resolve = Callable[[Input], Awaitable[tuple[str, str]]]


class InputCache:
    """Downloads by URL, kept on the agent so the same input is fetched once."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._locks: dict[str, asyncio.Lock] = {}

    def _paths(self, url: str) -> tuple[Path, Path]:
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.root / key, self.root / f"{key}.sha256"

    async def _download(self, client: httpx.AsyncClient, url: str, target: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        digest = hashlib.sha256()
        size = 0
        try:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InputError(f"the server answered {response.status_code}")
                with tmp.open("wb") as f:
                    async for chunk in response.aiter_bytes(1 << 20):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise InputError(f"larger than the limit of {self.max_bytes} bytes")
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError(str(exc) or type(exc).__name__) from None
        except InputError:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        target.with_suffix(".sha256").write_text(digest.hexdigest())

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
        cached, digest_file = self._paths(key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        hit = True
        async with lock:
            if not cached.exists() or not digest_file.exists():
                hit = False
                try:
                    await self._download(client, url, cached)
                except InputError as exc:
                    raise InputError(
                        f"input {item.name!r}: could not fetch {item.url}: {exc}"
                    ) from None
        dest = inputs_dir / item.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(cached, dest)  # no copy: the run reads the cache's file
        except OSError:
            shutil.copyfile(cached, dest)
        with contextlib.suppress(OSError):
            dest.chmod(0o444)  # a shared cached file must not be changed by one run
        return StagedInput(
            name=item.name,
            url=item.url,
            sha256=digest_file.read_text().strip(),
            size=cached.stat().st_size,
            cached=hit,
        )
