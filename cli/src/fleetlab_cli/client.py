"""The Python SDK: :class:`Client` (sync) and :class:`AsyncClient` over Fleetlab's REST API.

>>> from fleetlab_cli import Client
>>> with Client() as fl:                      # FLEETLAB_API_URL, stack.json or 127.0.0.1:5080
...     e = fl.submit("hello", {"lr": 0.5})
...     fl.experiment(e.id).status

Projects, experiments and sweeps come back as the API's own pydantic models
(:mod:`fleetlab_common.api`: the API validates and answers with the same classes); tokens,
agents and code snapshots as the API's JSON (``dict``). Every error is an :class:`ApiError`
carrying the status and the API's ``{"error", "fields"}`` body.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from fleetlab_common.api.experiments import (
    Experiment,
    ExperimentBatch,
    ExperimentCreate,
    ExperimentPage,
)
from fleetlab_common.api.projects import Project
from fleetlab_common.api.sweeps import Sweep, SweepPage

M = TypeVar("M", bound=BaseModel)
DEFAULT_URL = "http://127.0.0.1:5080"
# Code snapshots are sent in chunks of this size (the progress bar moves per chunk).
UPLOAD_CHUNK = 64 * 1024
Json = dict[str, Any]


def _models(model: type[M], items: Any) -> list[M]:
    return [model.model_validate(item) for item in items]


def plain(value: Any) -> Any:
    """A model (or a list of them) as the API's JSON: for tables and ``--json``."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class ApiError(Exception):
    """The API refused (4xx/5xx), with its message and the fields at fault."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.fields = fields or {}


def default_url() -> str:
    """``FLEETLAB_API_URL``, else the ``api_url`` of ``$FLEETLAB_HOME/stack.json`` (what
    ``fleetlab up`` writes), else http://127.0.0.1:5080."""
    env = os.environ.get("FLEETLAB_API_URL")
    if env:
        return env
    stack = Path(os.environ.get("FLEETLAB_HOME", ".fleetlab")) / "stack.json"
    try:
        url = json.loads(stack.read_text()).get("api_url")
    except (OSError, ValueError, AttributeError):
        url = None
    return url if isinstance(url, str) and url else DEFAULT_URL


@dataclass
class Call:
    """One request, built once and sent by either client."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    files: dict[str, tuple[str, bytes]] | None = None
    data: dict[str, str] | None = None
    raw: bool = False  # the body as text, not JSON
    content: Any = None  # a raw body: bytes, or an iterator of chunks
    headers: dict[str, str] | None = None


def _check(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message = str(body.get("error", response.text))
        fields = body.get("fields") or {}
    except (ValueError, AttributeError):
        message, fields = response.text or response.reason_phrase, {}
    raise ApiError(response.status_code, message, fields)


def _result(call: Call, response: httpx.Response) -> Any:
    _check(response)
    if call.raw:
        return response.text
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def default_token() -> str | None:
    """``FLEETLAB_TOKEN``, else the first token the API wrote to ``$FLEETLAB_HOME/api-token``
    (made when auth is on and no token existed)."""
    env = os.environ.get("FLEETLAB_TOKEN")
    if env:
        return env
    path = Path(os.environ.get("FLEETLAB_HOME", ".fleetlab")) / "api-token"
    try:
        secret = path.read_text().strip()
    except OSError:
        return None
    return secret or None


def _headers(token: str | None) -> dict[str, str]:
    token = token or default_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Calls:
    """The API's routes as :class:`Call` s (shared by both clients)."""

    @staticmethod
    def projects() -> Call:
        return Call("GET", "/api/v1/projects")

    @staticmethod
    def project(ref: str) -> Call:
        return Call("GET", f"/api/v1/projects/{ref}")

    @staticmethod
    def create_project(body: Json) -> Call:
        return Call("POST", "/api/v1/projects", json=body)

    @staticmethod
    def update_project(ref: str, changes: Json) -> Call:
        return Call("PATCH", f"/api/v1/projects/{ref}", json=changes)

    @staticmethod
    def delete_project(ref: str, force: bool) -> Call:
        return Call("DELETE", f"/api/v1/projects/{ref}", params={"force": str(force).lower()})

    @staticmethod
    def import_project(
        path: Path, fmt: str | None, name: str | None, replace: bool = False
    ) -> Call:
        data = {k: v for k, v in (("format", fmt), ("name", name)) if v}
        if replace:
            data["replace"] = "true"
        files = {"file": (path.name, path.read_bytes())}
        return Call("POST", "/api/v1/projects/import", files=files, data=data)

    @staticmethod
    def submit(
        project: str, options: Json, name: str | None, tags: list[str], code: str | None = None
    ) -> Call:
        body: Json = {"project": project, "options": options, "tags": tags}
        if name:
            body["name"] = name
        if code:
            body["code"] = code
        return Call("POST", "/api/v1/experiments", json=body)

    @staticmethod
    def submit_many(experiments: list[ExperimentCreate | Json]) -> Call:
        items = [
            e.model_dump(mode="json", exclude_unset=True) if isinstance(e, BaseModel) else e
            for e in experiments
        ]
        return Call("POST", "/api/v1/experiments/batch", json={"experiments": items})

    @staticmethod
    def experiments(filters: dict[str, Any]) -> Call:
        params = {k: v for k, v in filters.items() if v is not None}
        return Call("GET", "/api/v1/experiments", params=params)

    @staticmethod
    def experiment(ref: str) -> Call:
        return Call("GET", f"/api/v1/experiments/{ref}")

    @staticmethod
    def update_experiment(ref: str, changes: Json) -> Call:
        return Call("PATCH", f"/api/v1/experiments/{ref}", json=changes)

    @staticmethod
    def delete_experiment(ref: str) -> Call:
        return Call("DELETE", f"/api/v1/experiments/{ref}")

    @staticmethod
    def stop(ref: str, reason: str | None) -> Call:
        return Call(
            "POST", f"/api/v1/experiments/{ref}/stop", json={"reason": reason} if reason else None
        )

    @staticmethod
    def restart(ref: str) -> Call:
        return Call("POST", f"/api/v1/experiments/{ref}/restart")

    @staticmethod
    def logs(ref: str, from_seq: int) -> Call:
        return Call(
            "GET", f"/api/v1/experiments/{ref}/logs", params={"from_seq": from_seq}, raw=True
        )

    @staticmethod
    def agents() -> Call:
        return Call("GET", "/api/v1/agents")

    @staticmethod
    def upload_code(content: Any, size: int) -> Call:
        headers = {"content-type": "application/gzip", "content-length": str(size)}
        return Call("POST", "/api/v1/code", content=content, headers=headers)

    @staticmethod
    def code_snapshot(digest: str) -> Call:
        return Call("GET", f"/api/v1/code/{digest}")

    @staticmethod
    def tokens() -> Call:
        return Call("GET", "/api/v1/tokens")

    @staticmethod
    def create_token(name: str) -> Call:
        return Call("POST", "/api/v1/tokens", json={"name": name})

    @staticmethod
    def revoke_token(ref: str) -> Call:
        return Call("DELETE", f"/api/v1/tokens/{ref}")

    @staticmethod
    def create_sweep(body: Json) -> Call:
        return Call("POST", "/api/v1/sweeps", json={k: v for k, v in body.items() if v is not None})

    @staticmethod
    def sweeps(filters: dict[str, Any]) -> Call:
        params = {k: v for k, v in filters.items() if v is not None}
        return Call("GET", "/api/v1/sweeps", params=params)

    @staticmethod
    def sweep(ref: str) -> Call:
        return Call("GET", f"/api/v1/sweeps/{ref}")

    @staticmethod
    def stop_sweep(ref: str, reason: str | None) -> Call:
        return Call(
            "POST", f"/api/v1/sweeps/{ref}/stop", json={"reason": reason} if reason else None
        )


class Client:
    """Synchronous client. ``url`` and ``token`` default to ``FLEETLAB_API_URL`` (or
    ``stack.json``) and ``FLEETLAB_TOKEN``."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        response = self._http.request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            files=call.files,
            data=call.data,
            content=call.content,
            headers=call.headers,
        )
        return _result(call, response)

    def projects(self) -> list[Project]:
        result = _models(Project, self._send(_Calls.projects()))
        return result

    def project(self, ref: str) -> Project:
        result = Project.model_validate(self._send(_Calls.project(ref)))
        return result

    def create_project(self, **body: Any) -> Project:
        result = Project.model_validate(self._send(_Calls.create_project(body)))
        return result

    def update_project(self, ref: str, **changes: Any) -> Project:
        result = Project.model_validate(self._send(_Calls.update_project(ref, changes)))
        return result

    def delete_project(self, ref: str, *, force: bool = False) -> None:
        self._send(_Calls.delete_project(ref, force))

    def import_project(
        self,
        path: Path,
        *,
        format: str | None = None,
        name: str | None = None,
        replace: bool = False,
    ) -> list[Project]:
        """Projects from a file; with ``replace``, one that exists by name is updated."""
        result = _models(Project, self._send(_Calls.import_project(path, format, name, replace)))
        return result

    def submit(
        self,
        project: str,
        options: Json | None = None,
        *,
        name: str | None = None,
        tags: list[str] | None = None,
        code: str | None = None,
    ) -> Experiment:
        """One experiment; ``code`` names a snapshot (default: the project's)."""
        result = Experiment.model_validate(
            self._send(_Calls.submit(project, options or {}, name, tags or [], code))
        )
        return result

    def submit_many(self, experiments: list[ExperimentCreate | Json]) -> list[Experiment]:
        """Many experiments at once (1 to 1000), all or none: each an
        :class:`ExperimentCreate` or its JSON (``{"project", "options", ...}``). The records
        come back in the order given; a refused item raises :class:`ApiError` naming it
        (``experiments.<i>.<field>``) and nothing is created."""
        answer = self._send(_Calls.submit_many(experiments))
        result = ExperimentBatch.model_validate(answer).experiments
        return result

    def experiments(self, **filters: Any) -> ExperimentPage:
        """One page: ``{"items", "next"}`` (filters: project, status, tag, sweep, sort,
        cursor, limit)."""
        result = ExperimentPage.model_validate(self._send(_Calls.experiments(filters)))
        return result

    def iter_experiments(self, **filters: Any) -> Iterator[Experiment]:
        """Every matching experiment, page after page."""
        cursor = None
        while True:
            page = self.experiments(**filters, cursor=cursor)
            yield from page.items
            cursor = page.next
            if cursor is None:
                return

    def experiment(self, ref: str) -> Experiment:
        result = Experiment.model_validate(self._send(_Calls.experiment(ref)))
        return result

    def update_experiment(self, ref: str, **changes: Any) -> Experiment:
        result = Experiment.model_validate(self._send(_Calls.update_experiment(ref, changes)))
        return result

    def delete_experiment(self, ref: str) -> None:
        self._send(_Calls.delete_experiment(ref))

    def stop(self, ref: str, reason: str | None = None) -> Experiment:
        result = Experiment.model_validate(self._send(_Calls.stop(ref, reason)))
        return result

    def restart(self, ref: str) -> Experiment:
        result = Experiment.model_validate(self._send(_Calls.restart(ref)))
        return result

    def logs(self, ref: str, from_seq: int = 1) -> str:
        result: str = self._send(_Calls.logs(ref, from_seq))
        return result

    def agents(self) -> list[Json]:
        result: list[Json] = self._send(_Calls.agents())
        return result

    def upload_code(self, data: bytes, progress: Callable[[int], None] | None = None) -> Json:
        """Upload a code snapshot (a .tar.gz); ``progress`` is called with each chunk's
        size as it is sent. Answers ``{"digest", "size", "files", …}``."""

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), UPLOAD_CHUNK):
                chunk = data[start : start + UPLOAD_CHUNK]
                yield chunk
                if progress is not None:
                    progress(len(chunk))

        result: Json = self._send(_Calls.upload_code(chunks(), len(data)))
        return result

    def code_snapshot(self, digest: str) -> Json:
        """A snapshot's metadata and file list."""
        result: Json = self._send(_Calls.code_snapshot(digest))
        return result

    def tokens(self) -> list[Json]:
        result: list[Json] = self._send(_Calls.tokens())
        return result

    def create_token(self, name: str) -> Json:
        result: Json = self._send(_Calls.create_token(name))
        return result

    def revoke_token(self, ref: str) -> None:
        self._send(_Calls.revoke_token(ref))

    def create_sweep(self, project: str, parameters: Json, **fields: Any) -> Sweep:
        """A sweep (fields: method, count, parallelism, seed, metric, goal, name, …)."""
        result = Sweep.model_validate(
            self._send(
                _Calls.create_sweep({"project": project, "parameters": parameters, **fields})
            )
        )
        return result

    def sweeps(self, **filters: Any) -> SweepPage:
        """One page: ``{"items", "next"}`` (filters: project, cursor, limit)."""
        result = SweepPage.model_validate(self._send(_Calls.sweeps(filters)))
        return result

    def sweep(self, ref: str) -> Sweep:
        result = Sweep.model_validate(self._send(_Calls.sweep(ref)))
        return result

    def stop_sweep(self, ref: str, reason: str | None = None) -> Sweep:
        result = Sweep.model_validate(self._send(_Calls.stop_sweep(ref, reason)))
        return result


class AsyncClient:
    """The same API for asyncio."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        response = await self._http.request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            files=call.files,
            data=call.data,
            content=call.content,
            headers=call.headers,
        )
        return _result(call, response)

    async def projects(self) -> list[Project]:
        result = _models(Project, await self._send(_Calls.projects()))
        return result

    async def project(self, ref: str) -> Project:
        result = Project.model_validate(await self._send(_Calls.project(ref)))
        return result

    async def create_project(self, **body: Any) -> Project:
        result = Project.model_validate(await self._send(_Calls.create_project(body)))
        return result

    async def submit(
        self,
        project: str,
        options: Json | None = None,
        *,
        name: str | None = None,
        tags: list[str] | None = None,
        code: str | None = None,
    ) -> Experiment:
        result = Experiment.model_validate(
            await self._send(_Calls.submit(project, options or {}, name, tags or [], code))
        )
        return result

    async def submit_many(self, experiments: list[ExperimentCreate | Json]) -> list[Experiment]:
        answer = await self._send(_Calls.submit_many(experiments))
        result = ExperimentBatch.model_validate(answer).experiments
        return result

    async def experiments(self, **filters: Any) -> ExperimentPage:
        result = ExperimentPage.model_validate(await self._send(_Calls.experiments(filters)))
        return result

    async def iter_experiments(self, **filters: Any) -> AsyncIterator[Experiment]:
        cursor = None
        while True:
            page = await self.experiments(**filters, cursor=cursor)
            for item in page.items:
                yield item
            cursor = page.next
            if cursor is None:
                return

    async def experiment(self, ref: str) -> Experiment:
        result = Experiment.model_validate(await self._send(_Calls.experiment(ref)))
        return result

    async def update_experiment(self, ref: str, **changes: Any) -> Experiment:
        result = Experiment.model_validate(await self._send(_Calls.update_experiment(ref, changes)))
        return result

    async def delete_experiment(self, ref: str) -> None:
        await self._send(_Calls.delete_experiment(ref))

    async def stop(self, ref: str, reason: str | None = None) -> Experiment:
        result = Experiment.model_validate(await self._send(_Calls.stop(ref, reason)))
        return result

    async def restart(self, ref: str) -> Experiment:
        result = Experiment.model_validate(await self._send(_Calls.restart(ref)))
        return result

    async def logs(self, ref: str, from_seq: int = 1) -> str:
        result: str = await self._send(_Calls.logs(ref, from_seq))
        return result

    async def agents(self) -> list[Json]:
        result: list[Json] = await self._send(_Calls.agents())
        return result

    async def upload_code(self, data: bytes, progress: Callable[[int], None] | None = None) -> Json:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), UPLOAD_CHUNK):
                chunk = data[start : start + UPLOAD_CHUNK]
                yield chunk
                if progress is not None:
                    progress(len(chunk))

        result: Json = await self._send(_Calls.upload_code(chunks(), len(data)))
        return result

    async def code_snapshot(self, digest: str) -> Json:
        result: Json = await self._send(_Calls.code_snapshot(digest))
        return result

    async def create_sweep(self, project: str, parameters: Json, **fields: Any) -> Sweep:
        result = Sweep.model_validate(
            await self._send(
                _Calls.create_sweep({"project": project, "parameters": parameters, **fields})
            )
        )
        return result

    async def sweeps(self, **filters: Any) -> SweepPage:
        result = SweepPage.model_validate(await self._send(_Calls.sweeps(filters)))
        return result

    async def sweep(self, ref: str) -> Sweep:
        result = Sweep.model_validate(await self._send(_Calls.sweep(ref)))
        return result

    async def stop_sweep(self, ref: str, reason: str | None = None) -> Sweep:
        result = Sweep.model_validate(await self._send(_Calls.stop_sweep(ref, reason)))
        return result
