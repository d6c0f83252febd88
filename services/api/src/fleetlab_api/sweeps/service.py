"""Sweep logic.

A sweep is created whole in ONE transaction: the sweep row, every trial (an experiment with
``sweep_id``) and every trial's ``api.experiment.submitted`` event in the outbox. So each
trial exists exactly once whatever restarts: before the commit nothing exists, after it
everything does, and the outbox publishes the submissions after the commit (redelivered
events are deduplicated by the scheduler on the experiment id). The events carry the sweep's
``parallelism``; the scheduler never has more of its trials assigned or running at once.

When a trial ends, the transaction that records its end checks whether it was the sweep's
last; if so the sweep is marked finished and ``api.sweep.finished`` goes out through the
outbox in the same transaction (public webhook event ``sweep.finished``).
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from typing import Any

import asyncpg

from fleetlab_api.errors import ApiError, ConflictError, InvalidError, NotFoundError
from fleetlab_api.experiments import listing
from fleetlab_api.experiments.service import check_artifact_inputs
from fleetlab_api.metrics import summary as metric_summary
from fleetlab_api.projects import repository as projects
from fleetlab_api.sweeps import generate
from fleetlab_api.sweeps import repository as repo
from fleetlab_common.api.experiments import TERMINAL, Experiment
from fleetlab_common.api.sweeps import MAX_TRIALS, Sweep, SweepCreate
from fleetlab_common.db import Conn
from fleetlab_common.db.outbox import OutboxRelay, enqueue
from fleetlab_common.events import ExperimentStopRequested, ExperimentSubmitted, SweepFinished
from fleetlab_common.ids import uuid7
from fleetlab_common.log import get_logger

log = get_logger(__name__)

_LAST_ID = "ffffffff-ffff-ffff-ffff-ffffffffffff"


def metric_key(metric: str) -> str:
    """A sort key of the experiments list; a bare name is a score (``results._scores.x``)."""
    if "." in metric or metric in listing.FIELDS:
        return metric
    return f"results._scores.{metric}"


def _sort(metric: str, goal: str) -> listing.Sort:
    return listing.parse_sort(("-" if goal == "maximize" else "") + metric)


def _invalid(fields: dict[str, str]) -> InvalidError:
    return InvalidError(
        "invalid sweep: " + "; ".join(f"{k}: {v}" for k, v in fields.items()), fields
    )


async def create(conn: Conn, relay: OutboxRelay, body: SweepCreate) -> Sweep:
    """Check everything, then record the sweep, its trials and their events at once."""
    project = await projects.get(conn, body.project)
    if project is None:
        raise _invalid({"project": f"no project has the id or name {body.project!r}"})
    metric = metric_key(body.metric) if body.metric else None
    if metric is not None:
        try:
            _sort(metric, body.goal)
        except ApiError as exc:
            raise _invalid({"metric": exc.fields.get("sort", exc.message)}) from None
    try:
        axes = generate.parse(project.schema_, body.parameters, body.method)
        seed = body.seed
        if body.method == "grid":
            size = generate.grid_size(axes)
            if size > MAX_TRIALS:
                sizes = " × ".join(str(len(a.values or ())) for a in axes)
                raise generate.SpecError(
                    {
                        "parameters": f"the grid has {size:,} trials ({sizes}), more than "
                        f"the limit of {MAX_TRIALS:,}"
                    }
                )
            if body.count is not None and body.count != size:
                raise generate.SpecError(
                    {"count": f"a grid runs every combination ({size:,}); leave count out"}
                )
            points = generate.grid(axes)
        else:
            if body.count is None:
                raise generate.SpecError({"count": "a random sweep needs count (>= 1)"})
            if seed is None:
                seed = secrets.randbelow(2**31)
            points = generate.draws(axes, body.count, seed)
        option_sets = generate.option_sets(project.schema_, points)
    except generate.SpecError as exc:
        raise _invalid(exc.fields) from None

    sweep_id = uuid7()
    run = project.run_spec()
    await check_artifact_inputs(conn, run)
    label = body.name or f"sweep-{sweep_id.hex[-6:]}"
    rows: list[tuple[Any, ...]] = []
    events: list[ExperimentSubmitted] = []
    for number, options in enumerate(option_sets, start=1):
        trial_id = uuid7()
        rows.append(
            (
                trial_id,
                project.id,
                options,
                f"{label} #{number}",
                body.priority,
                body.tags,
                sweep_id,
                project.code,
            )
        )
        events.append(
            ExperimentSubmitted(
                experiment_id=trial_id,
                project_id=project.id,
                project=project.name,
                options=options,
                run=run,
                priority=body.priority,
                sweep_id=sweep_id,
                sweep_parallelism=body.parallelism,
            )
        )
    async with conn.transaction():
        await repo.insert(
            conn,
            {
                "id": sweep_id,
                "project_id": project.id,
                "name": body.name,
                "method": body.method,
                "parameters": body.parameters,
                "count": len(option_sets),
                "parallelism": body.parallelism,
                "seed": seed,
                "metric": metric,
                "goal": body.goal,
            },
        )
        await repo.insert_trials(conn, rows)
        await enqueue(conn, *events)
    relay.kick()
    log.info(
        "sweep.created",
        sweep_id=str(sweep_id),
        project=project.name,
        method=body.method,
        trials=len(rows),
    )
    return await get(conn, str(sweep_id))


async def best_trial(
    conn: Conn, sweep_id: uuid.UUID, metric: str | None, goal: str
) -> tuple[Experiment | None, Any]:
    """The trial with the best ``metric`` for ``goal`` (and its value), by the experiments
    list's own sort: its first row, trials without a value left out."""
    if metric is None:
        return None, None
    try:
        sort = _sort(metric, goal)
    except ApiError:  # a key the list no longer sorts by
        return None, None
    indexed = sort.metric is not None or sort.score is not None
    after = None
    if not indexed and not sort.descending:
        # A field or option sorts a missing value first when ascending: start after every
        # missing one. (Metric and score sorts put experiments without the value last.)
        raw = json.dumps({"s": sort.token, "v": None, "id": _LAST_ID})
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        after = listing.decode_cursor(sort, cursor)
    rows = await metric_summary.page_sorted(
        conn,
        project_id=None,
        status=None,
        tag=None,
        sweep_id=sweep_id,
        sort=sort,
        filters=[],
        after=after,
        limit=1,
    )
    if not rows:
        return None, None
    experiment, value = rows[0]
    if not indexed:
        value = sort.value_of(experiment)
    return (experiment, value) if value is not None else (None, None)


def _status(row: asyncpg.Record, counts: dict[str, int]) -> str:
    # The row and the counts are read apart: "finished" waits for the row's own mark (made in
    # the transaction that recorded the last trial's end), so it always comes with finished_at.
    if row["stopped_at"] is not None:
        return "stopped"
    if row["finished_at"] is not None:
        return "finished"
    return "running"


async def _view(conn: Conn, row: asyncpg.Record, counts: dict[str, int]) -> Sweep:
    best, value = await best_trial(conn, row["id"], row["metric"], row["goal"])
    return Sweep(
        id=row["id"],
        project=row["project"],
        project_id=row["project_id"],
        name=row["name"],
        method=row["method"],
        parameters=row["parameters"],
        count=row["count"],
        parallelism=row["parallelism"],
        seed=row["seed"],
        metric=row["metric"],
        goal=row["goal"],
        status=_status(row, counts),
        counts=counts,
        done=sum(n for s, n in counts.items() if s in TERMINAL),
        best=best,
        best_value=value,
        created_at=row["created_at"],
        stopped_at=row["stopped_at"],
        finished_at=row["finished_at"],
    )


def _sweep_id(ref: str) -> uuid.UUID:
    try:
        return uuid.UUID(ref)
    except ValueError:
        raise NotFoundError("sweep", ref) from None


async def get(conn: Conn, ref: str) -> Sweep:
    row = await repo.get(conn, _sweep_id(ref))
    if row is None:
        raise NotFoundError("sweep", ref)
    counts = await repo.counts(conn, [row["id"]])
    return await _view(conn, row, counts[row["id"]])


async def page(
    conn: Conn, project: str | None, cursor: str | None, limit: int
) -> tuple[list[Sweep], str | None]:
    project_id = None
    if project:
        found = await projects.get(conn, project)
        if found is None:
            raise NotFoundError("project", project)
        project_id = found.id
    before = None
    if cursor:
        try:
            before = uuid.UUID(cursor)
        except ValueError:
            raise InvalidError("invalid cursor", {"cursor": "not a cursor from `next`"}) from None
    rows = await repo.page(conn, project_id=project_id, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    counts = await repo.counts(conn, [r["id"] for r in rows])
    items = [await _view(conn, r, counts[r["id"]]) for r in rows]
    return items, (str(rows[-1]["id"]) if more else None)


async def stop(conn: Conn, relay: OutboxRelay, ref: str, reason: str) -> Sweep:
    """Stop a sweep: every queued or running trial gets a stop request, as a single
    experiment's stop does (queued ones never run; running ones get SIGTERM, then SIGKILL).
    Stopping a stopped sweep again changes nothing; 409 once it has finished."""
    sweep_id = _sweep_id(ref)
    async with conn.transaction():
        row = await repo.get(conn, sweep_id, lock=True)
        if row is None:
            raise NotFoundError("sweep", ref)
        active = await repo.active_trials(conn, sweep_id)
        if not active and row["stopped_at"] is None:
            raise ConflictError(
                f"sweep {sweep_id} has already finished: no trial is queued or running",
                {"status": "finished"},
            )
        await repo.mark_stopped(conn, sweep_id)
        await enqueue(
            conn, *[ExperimentStopRequested(experiment_id=i, reason=reason) for i in active]
        )
    relay.kick()
    log.info("sweep.stop_requested", sweep_id=str(sweep_id), trials=len(active))
    return await get(conn, ref)


async def finish_if_done(conn: Conn, experiment_id: object) -> bool:
    """In the transaction that recorded a change to ``experiment_id``: when it was its
    sweep's last trial to end, mark the sweep finished and enqueue ``api.sweep.finished``.
    True when it did (the caller kicks the outbox after its commit)."""
    if not isinstance(experiment_id, uuid.UUID):
        return False
    sweep_id = await repo.sweep_of(conn, experiment_id)
    if sweep_id is None:
        return False
    row = await repo.lock_unfinished(conn, sweep_id)
    if row is None:
        return False
    if await repo.has_active(conn, sweep_id):
        return False
    counts = (await repo.counts(conn, [sweep_id]))[sweep_id]
    await repo.mark_finished(conn, sweep_id)
    best, value = await best_trial(conn, sweep_id, row["metric"], row["goal"])
    status = "stopped" if row["stopped_at"] is not None else "finished"
    await enqueue(
        conn,
        SweepFinished(
            sweep_id=sweep_id,
            project_id=row["project_id"],
            project=row["project"],
            status=status,
            trials=sum(counts.values()),
            counts=counts,
            best_experiment_id=best.id if best else None,
            metric=row["metric"],
            best_value=value,
        ),
    )
    log.info("sweep.finished", sweep_id=str(sweep_id), status=status)
    return True
