"""``/api/v1/experiments/{id}/metrics`` and ``measurements.json``; a compare read."""

from __future__ import annotations

import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import InvalidError
from fleetlab_api.experiments import service as experiments
from fleetlab_api.metrics import service
from fleetlab_api.metrics.schemas import (
    ExperimentMetrics,
    MetricPointIn,
    MetricsPosted,
    PointsError,
    parse_points,
)
from fleetlab_api.usage import read_usage

router = APIRouter(tags=["metrics"])

# The body is read by hand (a batch may hold a million points); the document still shows it.
_POINT_SCHEMA = MetricPointIn.model_json_schema()

Points = Annotated[
    int,
    Query(
        ge=0,
        le=100_000,
        description="Downsample each series to at most this many points (largest triangle "
        "three buckets); 0 for every point.",
    ),
]


def _names(names: str | None) -> list[str] | None:
    if names is None:
        return None
    return [n for n in (part.strip() for part in names.split(",")) if n]


@router.post(
    "/api/v1/experiments/{ref}/metrics",
    status_code=201,
    response_model=MetricsPosted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            _POINT_SCHEMA,
                            {
                                "type": "array",
                                "items": _POINT_SCHEMA,
                            },
                            {"type": "object", "description": "wide: {step, <name>: value, ...}"},
                        ]
                    },
                    "example": [
                        {"name": "loss", "value": 0.42, "step": 1},
                        {"name": "loss", "value": 0.31, "step": 2, "metadata": {"phase": "train"}},
                    ],
                }
            },
        }
    },
)
async def post_metrics(ref: str, request: Request, conn: ConnDep, state: StateDep) -> MetricsPosted:
    """Add metric points: one, or a batch of any size (stored in order, before the answer).

    A point is ``{"name", "value", "step"?, "date"?, "metadata"?, "cumulative"?}`` (MLBench's
    fields) or wide, as the metrics file holds it: ``{"step": 3, "loss": 0.2, "acc": 0.9}``.
    ``{"_scores": {...}}`` sets the run's scores.
    """
    experiment = await experiments.get(conn, ref)
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None  # read again below: the standard parser's error, or its NaN as a value
    try:
        body = json.loads(raw) if body is None else body
    except ValueError as exc:
        raise InvalidError(
            f"the request body is not valid: malformed JSON: {exc}", {"body": "malformed JSON"}
        ) from None
    try:
        points, scores = parse_points(body)
    except PointsError as exc:
        raise InvalidError(f"invalid metric points: {exc}", exc.fields) from None
    if not points and not scores:
        raise InvalidError("no metric points in the body", {"body": "no points"})
    stored = await service.post_points(
        state.broker, experiment, points, scores, state.settings.rpc_timeout_s
    )
    return MetricsPosted(stored=stored, scores=len(scores))


@router.get("/api/v1/experiments/{ref}/metrics", response_model=ExperimentMetrics)
async def get_metrics(
    ref: str,
    conn: ConnDep,
    state: StateDep,
    names: Annotated[str | None, Query(description="Comma-separated metric names.")] = None,
    points: Points = 500,
) -> ExperimentMetrics:
    """Every series of the experiment (or ``names``), each metric's last/min/max, the scores."""
    experiment = await experiments.get(conn, ref)
    return await service.read_metrics(
        state.broker,
        experiment,
        names=_names(names),
        points=points,
        timeout_s=state.settings.rpc_timeout_s,
    )


@router.get("/api/v1/experiments/{ref}/measurements.json")
async def get_measurements(ref: str, conn: ConnDep, state: StateDep) -> JSONResponse:
    """MLBench's "Download Measurements": the experiment, every metric point (``name``,
    ``value``, ``date``, ``metadata``, ``cumulative``, ``step``), summaries, scores and every
    resource-use sample of its process tree (``resources``: CPU %, RSS, GPU) in one file."""
    experiment = await experiments.get(conn, ref)
    raw, extras = await service.raw_points(state.broker, experiment, state.settings.rpc_timeout_s)
    resources, _, _ = await read_usage(
        state.broker, {"experiment_id": str(experiment.id)}, None, 0, state.settings.rpc_timeout_s
    )
    body: dict[str, Any] = {
        "experiment": experiment.model_dump(mode="json"),
        "measurements": [
            {
                "name": p["name"],
                "value": p["value"],
                "date": p["ts"],
                "metadata": p["metadata"] or {},
                "cumulative": p["cumulative"],
                "step": p["step"],
                "attempt": p["attempt"],
            }
            for p in raw
        ],
        "summary": extras["summary"],
        "scores": extras["scores"],
        "resources": resources,
    }
    return JSONResponse(
        body,
        headers={
            "Content-Disposition": f'attachment; filename="{experiment.id}-measurements.json"'
        },
    )


@router.get("/api/v1/metrics/compare", response_model=list[ExperimentMetrics])
async def compare_metrics(
    conn: ConnDep,
    state: StateDep,
    experiments_: Annotated[
        str, Query(alias="experiments", description="Comma-separated experiment ids (at most 50).")
    ],
    names: Annotated[str | None, Query(description="Comma-separated metric names.")] = None,
    points: Points = 500,
) -> list[ExperimentMetrics]:
    """Several experiments' series side by side (downsampled like a single read)."""
    refs = _names(experiments_) or []
    if not 1 <= len(refs) <= 50:
        raise InvalidError("give 1 to 50 experiments", {"experiments": "1 to 50 ids"})
    out: list[ExperimentMetrics] = []
    for ref in refs:
        experiment = await experiments.get(conn, ref)
        out.append(
            await service.read_metrics(
                state.broker,
                experiment,
                names=_names(names),
                points=points,
                timeout_s=state.settings.rpc_timeout_s,
            )
        )
    return out
