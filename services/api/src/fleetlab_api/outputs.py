"""Experiment artifacts: the outputs an agent uploads when a run ends, listed and downloaded.

The agent holds no storage credential. When a run ends it asks the API, over NATS
(``rpc.api.outputs.presign``), for one short-lived presigned upload URL per file under
``outputs/``; the API checks the run and the size limits, and answers with URLs into the
artifact store (S3 itself, or this API's signed route for the local store). The finished event
then lists what was uploaded, and the read model records it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse
from faststream.nats import NatsBroker
from pydantic import BaseModel, Field

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import NotFoundError
from fleetlab_api.experiments import service as experiments
from fleetlab_api.state import State
from fleetlab_common.artifacts import ArtifactKeyError, validate_key
from fleetlab_common.db import Conn
from fleetlab_common.events import ExperimentFinished, Rpc
from fleetlab_common.runspec import artifact_ref

router = APIRouter(prefix="/api/v1/experiments", tags=["artifacts"])

# Presigned upload URLs live this long: enough for a large file on a slow link.
UPLOAD_URL_S = 3600
# An artifact named as another experiment's input is fetched through a URL this short-lived.
INPUT_URL_S = 300


def output_key(experiment_id: uuid.UUID, attempt: int, name: str) -> str:
    return f"experiments/{experiment_id}/{attempt}/outputs/{name}"


class OutputSpec(BaseModel):
    name: str
    size: int = Field(ge=0)


class PresignRequest(BaseModel):
    experiment_id: uuid.UUID
    attempt: int
    files: list[OutputSpec] = Field(max_length=10_000)


async def presign(state: State, request: PresignRequest) -> dict[str, Any]:
    """Upload URLs for the files that may be stored; a reason for each one that may not."""
    limits = state.settings
    per_file = limits.max_output_mb * 1024 * 1024
    budget = limits.max_outputs_mb * 1024 * 1024
    urls: dict[str, str] = {}
    refused: dict[str, str] = {}
    async with state.db().acquire() as conn:
        row = await conn.fetchrow(
            "SELECT attempt FROM experiments WHERE id = $1", request.experiment_id
        )
    if row is None or row["attempt"] != request.attempt:
        return {"urls": {}, "refused": {f.name: "no such run" for f in request.files}}
    for item in sorted(request.files, key=lambda f: f.size):
        try:
            key = validate_key(output_key(request.experiment_id, request.attempt, item.name))
        except ArtifactKeyError as exc:
            refused[item.name] = f"not a valid name: {exc.reason}"
            continue
        if item.size > per_file:
            refused[item.name] = f"larger than the {limits.max_output_mb} MB limit per file"
            continue
        if item.size > budget:
            refused[item.name] = f"over the {limits.max_outputs_mb} MB limit per run"
            continue
        budget -= item.size
        urls[item.name] = await state.artifacts().presigned_put_url(key, UPLOAD_URL_S)
    return {"urls": urls, "refused": refused}


class InputPresignRequest(BaseModel):
    url: str = Field(max_length=4096)


async def presign_input(state: State, request: InputPresignRequest) -> dict[str, Any]:
    """A short-lived download URL (with sha256 and size) of the artifact an
    ``artifact://<experiment id>/<name>`` input names, or an ``error`` saying why not."""
    try:
        ref = artifact_ref(request.url)
    except ValueError as exc:
        return {"error": str(exc)}
    if ref is None:
        return {"error": f"{request.url!r} is not an artifact:// URL"}
    experiment_id, name = ref
    async with state.db().acquire() as conn:
        row = await experiments.find_artifact(conn, experiment_id, name)
    if row is None:
        return {"error": f"experiment {experiment_id} has no artifact {name!r}"}
    return {
        "url": await state.artifacts().presigned_get_url(row["key"], INPUT_URL_S),
        "sha256": row["sha256"],
        "size": row["size"],
    }


def register_rpc(broker: NatsBroker, state: State) -> None:
    """Answer the agents' requests for upload URLs, and for input download URLs."""

    @broker.subscriber(Rpc.PRESIGN_INPUT, queue="api", title=f"{Rpc.PRESIGN_INPUT}:reply")
    async def handle_presign_input_request(body: InputPresignRequest) -> dict[str, Any]:
        return await presign_input(state, body)

    @broker.subscriber(Rpc.PRESIGN_OUTPUTS, queue="api", title=f"{Rpc.PRESIGN_OUTPUTS}:reply")
    async def handle_presign_request(body: PresignRequest) -> dict[str, Any]:
        return await presign(state, body)


async def record_outputs(conn: Conn, event: ExperimentFinished) -> None:
    """The outputs a finished run uploaded, as the experiment's artifacts."""
    await conn.execute(
        "DELETE FROM artifacts WHERE experiment_id = $1 AND kind = 'output'", event.experiment_id
    )
    await conn.executemany(
        """INSERT INTO artifacts (experiment_id, kind, name, attempt, size, sha256, key)
           VALUES ($1, 'output', $2, $3, $4, $5, $6)""",
        [
            (
                event.experiment_id,
                f.name,
                event.attempt,
                f.size,
                f.sha256,
                output_key(event.experiment_id, event.attempt, f.name),
            )
            for f in event.outputs
        ],
    )


class Artifact(BaseModel):
    """One file of an experiment."""

    name: str
    kind: str
    size: int
    sha256: str | None
    attempt: int


@router.get("/{ref}/artifacts", response_model=list[Artifact])
async def list_artifacts(ref: str, conn: ConnDep) -> list[Artifact]:
    """The experiment's files: name, size, sha256 and kind (output, input, code)."""
    experiment = await experiments.get(conn, ref)
    rows = await conn.fetch(
        "SELECT name, kind, size, sha256, attempt FROM artifacts"
        " WHERE experiment_id = $1 ORDER BY kind, name",
        experiment.id,
    )
    return [Artifact.model_validate(dict(r)) for r in rows]


@router.get("/{ref}/artifacts/{name:path}")
async def download_artifact(
    ref: str,
    name: Annotated[str, Path(description="the file's name under outputs/")],
    conn: ConnDep,
    state: StateDep,
) -> RedirectResponse:
    """Download one file: a redirect to a short-lived presigned URL."""
    experiment = await experiments.get(conn, ref)
    key = await conn.fetchval(
        "SELECT key FROM artifacts WHERE experiment_id = $1 AND name = $2 ORDER BY kind LIMIT 1",
        experiment.id,
        name,
    )
    if key is None:
        raise NotFoundError("artifact", name)
    return RedirectResponse(await state.artifacts().presigned_get_url(key, 300), 307)
