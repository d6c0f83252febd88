"""Experiment logic: submission, one or a batch (state and events in one transaction), and
reading logs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from asyncpg import Record
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError

from fleetlab_api.code import service as code
from fleetlab_api.code.service import CodeSnapshot
from fleetlab_api.errors import ApiError, ConflictError, InvalidError, NotFoundError
from fleetlab_api.experiments import repository as repo
from fleetlab_api.projects import repository as projects
from fleetlab_common.api.experiments import (
    TERMINAL,
    Experiment,
    ExperimentCreate,
    ExperimentUpdate,
)
from fleetlab_common.api.projects import Project, validate_options
from fleetlab_common.artifacts import ArtifactStore
from fleetlab_common.db import Conn
from fleetlab_common.db.outbox import OutboxRelay, enqueue
from fleetlab_common.events import (
    ExperimentDeleted,
    ExperimentStopRequested,
    ExperimentSubmitted,
    LogLine,
    Rpc,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.log import get_logger
from fleetlab_common.runspec import RunSpec, artifact_ref

log = get_logger(__name__)


async def find_artifact(conn: Conn, experiment_id: uuid.UUID, name: str) -> Record | None:
    """An experiment's artifact by name (its output first, when a name is taken twice)."""
    row: Record | None = await conn.fetchrow(
        """SELECT key, sha256, size FROM artifacts WHERE experiment_id = $1 AND name = $2
           ORDER BY (kind = 'output') DESC, kind LIMIT 1""",
        experiment_id,
        name,
    )
    return row


async def world_size(conn: Conn, experiment: Experiment) -> int:
    """How many workers (ranks) the experiment's project runs it with (1: a single process)."""
    project = await projects.get(conn, str(experiment.project_id))
    return project.workers if project is not None else 1


def rank_of(seq: int, world: int) -> int:
    """The rank that wrote line ``seq`` of a multi-worker run: rank r of N numbers its k-th
    line (from 0) k * N + r + 1, so that the ranks share one sequence."""
    return (seq - 1) % world


async def check_artifact_inputs(conn: Conn, run: RunSpec) -> None:
    """Every ``artifact://<experiment id>/<name>`` input must name an artifact that exists
    (422 naming the input otherwise): a typo is caught now, not when the run stages it."""
    errors: dict[str, str] = {}
    for index, item in enumerate(run.inputs):
        ref = artifact_ref(item.url)
        if ref is None:
            continue
        experiment_id, name = ref
        if not await conn.fetchval("SELECT true FROM experiments WHERE id = $1", experiment_id):
            errors[f"inputs.{index}.url"] = (
                f"input {item.name!r}: no experiment {experiment_id} (from {item.url})"
            )
        elif await find_artifact(conn, experiment_id, name) is None:
            errors[f"inputs.{index}.url"] = (
                f"input {item.name!r}: experiment {experiment_id} has no artifact {name!r}"
            )
    if errors:
        raise InvalidError(
            "inputs name artifacts that do not exist: " + "; ".join(errors.values()), errors
        )


@dataclass(frozen=True)
class Checked:
    """A submission that passed every check, ready to record."""

    body: ExperimentCreate
    project: Project
    options: dict[str, Any]  # the schema's defaults filled in
    run: RunSpec  # with the code snapshot's digest, when it runs one
    snapshot: CodeSnapshot | None


@dataclass
class Lookups:
    """What the submissions of one request share, looked up once: projects by reference,
    code snapshots by reference, and the run spec of each project whose inputs were checked."""

    projects: dict[str, Project | None] = field(default_factory=dict)
    snapshots: dict[str, CodeSnapshot] = field(default_factory=dict)
    runs: dict[uuid.UUID, RunSpec] = field(default_factory=dict)


async def check(conn: Conn, body: ExperimentCreate, seen: Lookups | None = None) -> Checked:
    """Everything a submission must pass before it is recorded: a known project, options that
    fit its schema, a stored code snapshot, artifact inputs that exist (422 naming the field
    otherwise). ``seen`` keeps what a batch's items share from being looked up again."""
    seen = seen if seen is not None else Lookups()
    if body.project not in seen.projects:
        seen.projects[body.project] = await projects.get(conn, body.project)
    project = seen.projects[body.project]
    if project is None:
        raise InvalidError(
            f"unknown project {body.project!r}", {"project": "no project has this id or name"}
        )
    options, errors = validate_options(project.schema_, body.options)
    if errors:
        raise InvalidError(
            "options do not fit the project's schema: "
            + "; ".join(f"{k}: {v}" for k, v in errors.items()),
            errors,
        )
    # The code snapshot it runs: its own, else the project's default.
    code_ref = body.code if body.code is not None else project.code
    snapshot = None
    if code_ref is not None:
        if code_ref not in seen.snapshots:
            seen.snapshots[code_ref] = await code.resolve(conn, code_ref)
        snapshot = seen.snapshots[code_ref]
    run = seen.runs.get(project.id)
    if run is None:
        run = project.run_spec()
        await check_artifact_inputs(conn, run)
        seen.runs[project.id] = run
    if snapshot is not None:
        run = run.model_copy(update={"code": snapshot.digest})
    return Checked(body, project, options, run, snapshot)


async def check_batch(conn: Conn, bodies: list[ExperimentCreate]) -> list[Checked]:
    """:func:`check` for each item in order; the first refusal is answered with its fields
    under the item's path (``experiments.3.options.lr``)."""
    seen = Lookups()
    checked: list[Checked] = []
    for index, body in enumerate(bodies):
        try:
            checked.append(await check(conn, body, seen))
        except ApiError as exc:
            at = f"experiments.{index}"
            fields = {f"{at}.{name}": why for name, why in exc.fields.items()}
            message = f"{at}: {exc.message}"
            raise ApiError(exc.status, message, fields or {at: exc.message}) from None
    return checked


async def record(conn: Conn, relay: OutboxRelay, checked: list[Checked]) -> list[Experiment]:
    """Record checked submissions and their ``api.experiment.submitted`` events in one
    transaction, publish after the commit; the records come back in the order given."""
    ids = [uuid7() for _ in checked]
    rows = [
        (i, c.project.id, c.options, c.body.name, c.body.priority, c.body.tags)
        for i, c in zip(ids, checked, strict=True)
    ]
    events = [
        ExperimentSubmitted(
            experiment_id=i,
            project_id=c.project.id,
            project=c.project.name,
            options=c.options,
            run=c.run,
            priority=c.body.priority,
        )
        for i, c in zip(ids, checked, strict=True)
    ]
    async with conn.transaction():
        await repo.insert(conn, rows)
        for experiment_id, c in zip(ids, checked, strict=True):
            if c.snapshot is not None:
                await code.attach(conn, experiment_id, c.snapshot)
        await enqueue(conn, *events)
        experiments = await repo.get_many(conn, ids)
    relay.kick()
    for experiment in experiments:
        log.info(
            "experiment.submitted", experiment_id=str(experiment.id), project=experiment.project
        )
    return experiments


async def submit(conn: Conn, relay: OutboxRelay, body: ExperimentCreate) -> Experiment:
    """Check the options against the project's schema, record the experiment and its
    ``api.experiment.submitted`` event in one transaction, then publish."""
    return (await record(conn, relay, [await check(conn, body)]))[0]


async def submit_batch(
    conn: Conn, relay: OutboxRelay, bodies: list[ExperimentCreate]
) -> list[Experiment]:
    """Every item checked first (the first refusal answered, nothing created), then all
    recorded in one transaction and published after it."""
    return await record(conn, relay, await check_batch(conn, bodies))


async def stop(conn: Conn, relay: OutboxRelay, ref: str, reason: str) -> Experiment:
    """Ask for an experiment to stop: cancelled if still queued, SIGTERM then SIGKILL if
    running. Asking again while it stops changes nothing."""
    experiment = await get(conn, ref)
    if experiment.status in TERMINAL:
        raise ConflictError(
            f"experiment {experiment.id} has already ended ({experiment.status})",
            {"status": experiment.status},
        )
    async with conn.transaction():
        await enqueue(conn, ExperimentStopRequested(experiment_id=experiment.id, reason=reason))
    relay.kick()
    log.info("experiment.stop_requested", experiment_id=str(experiment.id))
    return experiment


async def restart(conn: Conn, relay: OutboxRelay, ref: str) -> Experiment:
    """A new experiment with the same project, options, name, priority, tags and code
    snapshot."""
    old = await get(conn, ref)
    body = ExperimentCreate(
        project=str(old.project_id),
        options=old.options,
        name=old.name,
        priority=old.priority,
        tags=old.tags,
        code=old.code,
    )
    return await submit(conn, relay, body)


async def explain_waiting(
    broker: NatsBroker, experiments: list[Experiment], timeout_s: float
) -> list[Experiment]:
    """Add the scheduler's reason to each queued experiment's ``status_reason``.

    Best effort: when the scheduler does not answer, the records go out as they are.
    """
    queued = [e for e in experiments if e.status == "queued"]
    if not queued:
        return experiments
    try:
        reply = await broker.request(
            {"experiment_ids": [str(e.id) for e in queued]},
            Rpc.WHY_WAITING,
            timeout=min(timeout_s, 1.0),
        )
        answer = await reply.decode()
        reasons = answer.get("reasons", {}) if isinstance(answer, dict) else {}
    except Exception:  # the scheduler is away: no reason is better than no record
        return experiments

    def explained(e: Experiment) -> Experiment:
        why = reasons.get(str(e.id))
        if not why:
            return e
        reason = f"{e.status_reason}; {why}" if e.status_reason else why
        return e.model_copy(update={"status_reason": reason})

    return [explained(e) for e in experiments]


async def get(conn: Conn, ref: str) -> Experiment:
    try:
        experiment_id = uuid.UUID(ref)
    except ValueError:
        raise NotFoundError("experiment", ref) from None
    experiment = await repo.get(conn, experiment_id)
    if experiment is None:
        raise NotFoundError("experiment", ref)
    return experiment


async def read_lines(
    broker: NatsBroker,
    experiment: Experiment,
    *,
    stream: str | None,
    from_seq: int,
    to_seq: int | None,
    timeout_s: float,
) -> list[LogLine]:
    """Every stored line in range, asked of logstream page by page over NATS.

    For a finished run the API knows how many lines it produced, so logstream waits briefly
    for a last batch still on its way instead of answering short.
    """
    expected = experiment.log_lines if experiment.status in TERMINAL else None
    lines: list[LogLine] = []
    next_seq: int | None = from_seq
    while next_seq is not None:
        query = {
            "experiment_id": str(experiment.id),
            "attempt": experiment.attempt,
            "stream": stream,
            "from_seq": next_seq,
            "to_seq": to_seq,
            "min_count": expected,
        }
        try:
            reply = await broker.request(query, Rpc.LOG_LINES, timeout=timeout_s)
        except TimeoutError:
            raise ApiError(503, "the log service did not answer in time") from None
        except NoRespondersError:
            # NATS says at once that nobody listens: logstream is not running.
            raise ApiError(503, "the log service did not answer: it is not running") from None
        page = await reply.decode()
        if not isinstance(page, dict) or "lines" not in page:
            raise ApiError(503, "the log service gave an unexpected answer")
        lines += [LogLine.model_validate(ln) for ln in page["lines"]]
        next_seq = page.get("next_seq")
    return lines


async def update(conn: Conn, ref: str, body: ExperimentUpdate) -> Experiment:
    """Set the name and/or the notes given; ``"name": null`` clears the name."""
    experiment = await get(conn, ref)
    fields = body.model_dump(exclude_unset=True)
    if fields.get("notes", "") is None:
        raise InvalidError("notes cannot be null", {"notes": "a string; empty to clear"})
    updated = await repo.update_fields(conn, experiment.id, fields)
    if updated is None:
        raise NotFoundError("experiment", ref)
    return updated


async def delete(conn: Conn, relay: OutboxRelay, store: ArtifactStore, ref: str) -> None:
    """Delete an experiment; 409 while it is queued or running (stop it first).

    The record goes with ``api.experiment.deleted`` in one transaction: logstream then drops
    the stored log, metrics and usage. The files under the experiment's prefix in the artifact
    store (outputs of every attempt) are deleted here once the record is gone; code snapshots
    are shared by content and stay.
    """
    experiment = await get(conn, ref)
    if experiment.status not in TERMINAL:
        raise ConflictError(
            f"experiment {experiment.id} is {experiment.status}: stop it before deleting it",
            {"status": experiment.status},
        )
    async with conn.transaction():
        if not await repo.delete(conn, experiment.id):
            raise NotFoundError("experiment", ref)
        await enqueue(conn, ExperimentDeleted(experiment_id=experiment.id))
    relay.kick()
    await delete_files(store, [experiment.id])
    log.info("experiment.deleted", experiment_id=str(experiment.id))


async def delete_files(store: ArtifactStore, experiment_ids: list[uuid.UUID]) -> None:
    """Delete the stored files of deleted experiments (every object under their prefix)."""
    for experiment_id in experiment_ids:
        for info in await store.list(f"experiments/{experiment_id}/"):
            await store.delete(info.key)
