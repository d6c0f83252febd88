"""FGMachine's results folder: JSON files a run writes there become the experiment's results.

A project that names ``results`` (the run spec's, relative to the run's working directory; or
an FGMachine ``projects.json`` entry's, relative to that file's folder, with the experiment id
appended as FGMachine did) has that folder watched while the run goes: every ``interval_s``
(1 s) the agent looks for ``*.json`` files (in subfolders too) that are new or changed, reads
each, and sends their fields, merged, as one ``agent.results.reported`` event (through the
spool, like metrics); the API merges them into the experiment's ``results``: newest wins,
``_scores`` merged name by name (``_notes``, ``_charts`` and custom fields replaced whole).
Files are merged oldest first (by modification time), so the newest file's value wins.

A file that is not a JSON object is skipped with a counted warning in the agent's log, never
fatal. A file caught half-written is read again once it changed; it counts as malformed only
when it stays so for two looks in a row, or at the end of the run. A file over
``MAX_FILE_BYTES`` is skipped (and counted) too. When the run ends the folder is read once more
and every file in it (images too) is uploaded with the outputs, under ``results/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetlab_common.events import Event, ResultsReported
from fleetlab_common.log import get_logger

log = get_logger(__name__)

# A results file larger than this is not read (it is still uploaded at the end).
MAX_FILE_BYTES = 256 * 1024
# One event carries at most about this much JSON (NATS's limit is 1 MiB).
MAX_EVENT_BYTES = 512 * 1024
# Under this name the folder's files are uploaded with the outputs.
UPLOAD_PREFIX = "results"

Publish = Callable[[dict[str, Any], list[str], int], Awaitable[None]]


def results_folder(
    experiment_id: uuid.UUID, run_dir: Path, spec_results: str | None, local: Path | None
) -> Path | None:
    """Where the run's results go: an FGMachine project's ``<results>/<experiment id>`` (its
    ``results`` resolved beside projects.json, given as ``local``), else the run spec's folder
    under the run's working directory; None when the project names none."""
    if local is not None:
        return local / str(experiment_id)
    if spec_results:
        path = Path(spec_results)
        return path if path.is_absolute() else run_dir / path
    return None


def merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over ``into``: newest wins, ``_scores`` merged name by name."""
    scores = into.get("_scores")
    into.update(new)
    if isinstance(scores, dict) and isinstance(new.get("_scores"), dict):
        into["_scores"] = {**scores, **new["_scores"]}
    return into


def _json_files(root: Path) -> list[tuple[str, Path, int, int]]:
    """(name under root, path, mtime_ns, size) of each ``*.json`` file; links not followed."""
    found: list[tuple[str, Path, int, int]] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
        for name in filenames:
            if not name.endswith(".json"):
                continue
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if path.is_symlink() or not path.is_file():
                continue
            found.append((path.relative_to(root).as_posix(), path, st.st_mtime_ns, st.st_size))
    return found


@dataclass
class ResultsWatcher:
    """Reads new or changed JSON files of a results folder and hands them to ``publish``."""

    folder: Path
    publish: Publish
    interval_s: float = 1.0
    skipped: int = 0
    # name -> (mtime_ns, size) of the version last read (or last counted as malformed).
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    # name -> version seen malformed once, not yet counted.
    _suspect: dict[str, tuple[int, int]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def scan(self, *, final: bool = False) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """The files new or changed since the last scan, oldest first, and how many of them
        were found malformed now."""
        read: list[tuple[int, str, dict[str, Any]]] = []
        bad = 0
        for name, path, mtime, size in _json_files(self.folder):
            version = (mtime, size)
            if self._seen.get(name) == version:
                continue
            problem = None
            content: Any = None
            if size > MAX_FILE_BYTES:
                problem = f"larger than {MAX_FILE_BYTES} bytes"
            else:
                try:
                    content = json.loads(path.read_bytes())
                except (OSError, ValueError) as exc:
                    problem = f"not JSON: {exc}"
                else:
                    if not isinstance(content, dict):
                        problem = "not a JSON object"
            if problem is None:
                self._seen[name] = version
                self._suspect.pop(name, None)
                read.append((mtime, name, content))
                continue
            # Half-written now, perhaps: counted when it stays so, or when the run is over.
            if final or self._suspect.get(name) == version or size > MAX_FILE_BYTES:
                self._seen[name] = version
                self._suspect.pop(name, None)
                bad += 1
                log.warning(
                    "results.malformed_file",
                    folder=str(self.folder),
                    file=name,
                    reason=problem,
                    skipped=self.skipped + bad,
                )
            else:
                self._suspect[name] = version
        read.sort(key=lambda item: (item[0], item[1]))
        return [(name, content) for _, name, content in read], bad

    async def _send(self, files: list[tuple[str, dict[str, Any]]], bad: int) -> None:
        """As few events as fit: each carries the merge of its files."""
        group: list[str] = []
        merged: dict[str, Any] = {}
        size = 0
        for name, content in files:
            cost = len(json.dumps(content, default=str)) + len(name) + 8
            if group and size + cost > MAX_EVENT_BYTES:
                await self.publish(merged, group, 0)
                group, merged, size = [], {}, 0
            group.append(name)
            merge(merged, content)
            size += cost
        if group or bad:
            await self.publish(merged, group, bad)

    async def _drain(self, *, final: bool) -> None:
        files, bad = await asyncio.to_thread(self.scan, final=final)
        self.skipped += bad
        await self._send(files, bad)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._drain(final=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a folder that cannot be read now: try again later
                log.warning("results.scan_failed", folder=str(self.folder), error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)

    def start(self) -> ResultsWatcher:
        self._task = asyncio.create_task(self._run(), name=f"results-{self.folder.name}")
        return self

    async def close(self) -> int:
        """Stop watching, read the folder one last time; returns the malformed files skipped."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._drain(final=True)
        return self.skipped


def watch_results(
    send: Callable[[Event], Awaitable[None]],
    agent_id: str,
    experiment_id: uuid.UUID,
    attempt: int,
    folder: Path,
    interval_s: float = 1.0,
) -> ResultsWatcher:
    """Start watching ``folder``; what it finds goes to ``send`` (the agent's spool) as
    ``agent.results.reported`` events."""

    async def publish(results: dict[str, Any], files: list[str], skipped: int) -> None:
        await send(
            ResultsReported(
                experiment_id=experiment_id,
                agent_id=agent_id,
                attempt=attempt,
                results=results,
                files=files,
                skipped=skipped,
            )
        )

    return ResultsWatcher(folder, publish, interval_s).start()
