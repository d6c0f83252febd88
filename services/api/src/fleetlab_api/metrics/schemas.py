"""Metric schemas, and the reading of posted points (any size, one or many, MLBench's too)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

# Keys of a posted point that are not metric values in the "wide" form {"step": 3, "loss": 1}.
_RESERVED = frozenset({"step", "ts", "date", "metadata", "cumulative", "_scores", "name"})
MAX_NAME_CHARS = 200


class MetricPointIn(BaseModel):
    """One posted point: ``name`` and ``value`` (MLBench's ``date``, ``metadata`` and
    ``cumulative`` accepted; ``ts`` is the same as ``date``; both default to now)."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    value: float
    step: int | None = None
    date: datetime | None = None
    metadata: dict[str, Any] | None = None
    cumulative: bool = False


class MetricsPosted(BaseModel):
    """``POST /api/v1/experiments/{id}/metrics``'s answer: how many points were stored."""

    stored: int
    scores: int = 0


class SeriesPoint(BaseModel):
    step: int | None
    value: float
    ts: datetime


class Series(BaseModel):
    name: str
    points: list[SeriesPoint]
    total: int
    downsampled: bool = False


class MetricSummary(BaseModel):
    """A metric's last, min and max over the experiment (and how many points it has)."""

    name: str
    last: float
    last_step: int | None
    last_ts: datetime
    min: float
    max: float
    count: int


class ExperimentMetrics(BaseModel):
    """Every series of one experiment, with each metric's summary and the run's scores."""

    experiment_id: str
    series: list[Series]
    summary: list[MetricSummary]
    scores: dict[str, float]


class PointsError(ValueError):
    """A posted body that is not points; ``fields`` says where and why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def _number(value: Any) -> float | None:
    kind = type(value)  # exact types: a bool is not a number here
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        f = float(value)
        return f if math.isfinite(f) else None
    return None


def _when(raw: Any, now: str) -> str | None:
    if raw is None:
        return now
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return datetime.fromtimestamp(raw, UTC).isoformat()
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
    return None


def parse_points(body: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Points (as logstream takes them) and ``_scores`` from a posted JSON body.

    The body is one point, a list of points, or ``{"points": [...]}``. A point is either
    long (``{"name": "loss", "value": 0.2, ...}``, MLBench's fields) or wide
    (``{"step": 3, "loss": 0.2, "accuracy": 0.9}``, as the metrics file holds). Written by
    hand rather than as a pydantic list: a batch may hold a million points.
    """
    if isinstance(body, dict) and isinstance(body.get("points"), list):
        items: list[Any] = body["points"]
    elif isinstance(body, list):
        items = body
    else:
        items = [body]
    now = datetime.now(UTC).isoformat()
    points: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    errors: dict[str, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors[f"points.{i}"] = "must be an object"
            continue
        step = item.get("step")
        if step is not None and type(step) is not int:
            errors[f"points.{i}.step"] = "must be an integer"
            continue
        raw_ts = item.get("date")
        if raw_ts is None:
            raw_ts = item.get("ts")
        ts = now if raw_ts is None else _when(raw_ts, now)
        if ts is None:
            errors[f"points.{i}.date"] = "must be an ISO 8601 time or a Unix timestamp"
            continue
        metadata = item.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            errors[f"points.{i}.metadata"] = "must be an object"
            continue
        raw_scores = item.get("_scores")
        if raw_scores is not None:
            if not isinstance(raw_scores, dict):
                errors[f"points.{i}._scores"] = "must be an object of numbers"
                continue
            for key, val in raw_scores.items():
                num = _number(val)
                if num is None:
                    errors[f"points.{i}._scores.{key}"] = "must be a finite number"
                else:
                    scores[str(key)] = num
        cumulative = bool(item.get("cumulative", False))
        if "name" in item:
            name, value = item["name"], _number(item.get("value"))
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
                errors[f"points.{i}.name"] = f"must be a text of 1 to {MAX_NAME_CHARS} characters"
            elif value is None:
                errors[f"points.{i}.value"] = "must be a finite number"
            else:
                points.append(
                    {
                        "name": name,
                        "value": value,
                        "step": step,
                        "ts": ts,
                        "metadata": metadata,
                        "cumulative": cumulative,
                    }
                )
            continue
        for key, val in item.items():
            if key in _RESERVED:
                continue
            value = _number(val)
            if value is None or len(key) > MAX_NAME_CHARS:
                errors[f"points.{i}.{key}"] = "must be a finite number"
                continue
            points.append(
                {
                    "name": key,
                    "value": value,
                    "step": step,
                    "ts": ts,
                    "metadata": metadata,
                    "cumulative": cumulative,
                }
            )
        if len(errors) >= 20:
            break
    if errors:
        raise PointsError(errors)
    return points, scores
