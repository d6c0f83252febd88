"""Outputs (MachineLabs' third stage): what a run leaves under ``outputs/`` is uploaded when it
ends, through presigned URLs the API hands out — the agent holds no storage credential."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from faststream.nats import NatsBroker

from fleetlab_common.events import OutputFile, Rpc
from fleetlab_common.log import get_logger

log = get_logger(__name__)

CHUNK = 1 << 20


def _files(root: Path) -> list[tuple[str, Path, int]]:
    """Regular files under ``root`` (links are not followed: a run cannot upload what it
    links to outside its folder)."""
    found: list[tuple[str, Path, int]] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            found.append((path.relative_to(root).as_posix(), path, path.stat().st_size))
    return sorted(found)


def _extra_files(root: Path, prefix: str, folder: Path) -> list[tuple[str, Path, int]]:
    """Files of another folder (a results folder), named ``<prefix>/<name>``; none when it
    lies under ``root`` (its files are outputs already)."""
    if folder.resolve().is_relative_to(root.resolve()):
        return []
    return [(f"{prefix}/{name}", path, size) for name, path, size in _files(folder)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


async def upload_outputs(
    broker: NatsBroker,
    http: httpx.AsyncClient,
    experiment_id: uuid.UUID,
    attempt: int,
    root: Path,
    extra: dict[str, Path] | None = None,
    name_prefix: str = "",
) -> tuple[list[OutputFile], dict[str, str]]:
    """Upload every file under ``root`` (and under each ``extra`` folder, named
    ``<prefix>/<name>``); return what was stored and why the rest was not."""
    files = await asyncio.to_thread(_files, root)
    for prefix, folder in (extra or {}).items():
        files += await asyncio.to_thread(_extra_files, root, prefix, folder)
    if name_prefix:  # a rank r > 0 of a multi-worker experiment: its files under rank-<r>/
        files = [(name_prefix + name, path, size) for name, path, size in files]
    if not files:
        return [], {}
    request = {
        "experiment_id": str(experiment_id),
        "attempt": attempt,
        "files": [{"name": name, "size": size} for name, _, size in files],
    }
    answer: object = None
    for backoff in (0.2, 1.0, 3.0, None):
        try:
            reply = await broker.request(request, Rpc.PRESIGN_OUTPUTS, timeout=10)
            answer = await reply.decode()
            break
        except Exception as exc:  # the API or NATS is away for now
            if backoff is None:
                reason = f"could not get upload URLs from the API: {exc!r}"
                return [], {name: reason for name, _, _ in files}
            await asyncio.sleep(backoff)
    if not isinstance(answer, dict):
        return [], {name: "the API gave an unexpected answer" for name, _, _ in files}
    urls: dict[str, str] = answer.get("urls", {})
    skipped: dict[str, str] = dict(answer.get("refused", {}))
    uploaded: list[OutputFile] = []
    for name, path, size in files:
        url = urls.get(name)
        if url is None:
            skipped.setdefault(name, "refused by the API")
            continue
        try:
            digest = await asyncio.to_thread(_sha256, path)
            response = await http.put(
                url, content=_chunks(path), headers={"content-length": str(size)}
            )
            if response.status_code >= 300:
                skipped[name] = f"upload answered {response.status_code}"
                continue
        except (OSError, httpx.HTTPError) as exc:
            skipped[name] = f"upload failed: {exc!r}"
            continue
        uploaded.append(OutputFile(name=name, size=size, sha256=digest))
    if skipped:
        log.warning("experiment.outputs_skipped", experiment_id=str(experiment_id), skipped=skipped)
    return uploaded, skipped
