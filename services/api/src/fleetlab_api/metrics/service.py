"""Metrics live in logstream (run telemetry, one schema); the API forwards and reads them
over request/reply."""

from __future__ import annotations

from typing import Any

import orjson
from faststream.nats import NatsBroker

from fleetlab_api.errors import ApiError
from fleetlab_api.logs.service import ask
from fleetlab_api.metrics.schemas import ExperimentMetrics, Series, SeriesPoint
from fleetlab_common.api.experiments import Experiment
from fleetlab_common.events import Rpc

# One request to logstream stays well under NATS's 1 MiB payload limit.
MAX_CHUNK_BYTES = 512 * 1024


async def post_points(
    broker: NatsBroker,
    experiment: Experiment,
    points: list[dict[str, Any]],
    scores: dict[str, float],
    timeout_s: float,
) -> int:
    """Store the points in order, in chunks; each chunk is stored (COPY) before the next."""
    stored = 0
    chunk: list[bytes] = []
    size = 0

    async def send(items: list[bytes], with_scores: dict[str, float]) -> int:
        body = b'{"experiment_id":"%s","attempt":%d,"scores":%s,"points":[%s]}' % (
            str(experiment.id).encode(),
            experiment.attempt,
            orjson.dumps(with_scores),
            b",".join(items),
        )
        reply = await ask(broker, Rpc.METRICS_INGEST, body, timeout_s * 4)
        if not isinstance(reply, dict) or "stored" not in reply:
            raise ApiError(503, "the metrics store gave an unexpected answer")
        return int(reply["stored"])

    encode = orjson.dumps
    for point in points:
        text = encode(point)
        if chunk and size + len(text) > MAX_CHUNK_BYTES:
            stored += await send(chunk, {})
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    if chunk or scores:
        stored += await send(chunk, scores)
    return stored


async def read_metrics(
    broker: NatsBroker,
    experiment: Experiment,
    *,
    names: list[str] | None,
    points: int,
    timeout_s: float,
) -> ExperimentMetrics:
    """Every series (or ``names``): downsampled to ``points`` each, or whole (``points=0``,
    read page by page)."""
    query: dict[str, Any] = {
        "experiment_id": str(experiment.id),
        "names": names,
        "points": points,
    }
    page = await ask(broker, Rpc.METRICS, query, timeout_s * 4)
    if not isinstance(page, dict) or "summary" not in page:
        raise ApiError(503, "the metrics store gave an unexpected answer")
    if points > 0:
        return ExperimentMetrics(
            experiment_id=str(experiment.id),
            series=page["series"],
            summary=page["summary"],
            scores=page["scores"],
        )
    by_name: dict[str, list[SeriesPoint]] = {s["name"]: [] for s in page["summary"]}
    raw: list[dict[str, Any]] = []
    while True:
        raw += page["raw"] or []
        if page.get("next_after_id") is None:
            break
        page = await ask(
            broker, Rpc.METRICS, {**query, "after_id": page["next_after_id"]}, timeout_s * 4
        )
    for p in raw:
        by_name.setdefault(p["name"], []).append(
            SeriesPoint(step=p["step"], value=p["value"], ts=p["ts"])
        )
    return ExperimentMetrics(
        experiment_id=str(experiment.id),
        series=[Series(name=n, points=ps, total=len(ps)) for n, ps in by_name.items()],
        summary=page["summary"],
        scores=page["scores"],
    )


async def raw_points(
    broker: NatsBroker, experiment: Experiment, timeout_s: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every point as stored (MLBench's measurement fields), and the last page's extras."""
    query: dict[str, Any] = {"experiment_id": str(experiment.id), "points": 0}
    raw: list[dict[str, Any]] = []
    while True:
        page = await ask(broker, Rpc.METRICS, query, timeout_s * 4)
        if not isinstance(page, dict) or "summary" not in page:
            raise ApiError(503, "the metrics store gave an unexpected answer")
        raw += page["raw"] or []
        if page.get("next_after_id") is None:
            return raw, page
        query["after_id"] = page["next_after_id"]
