"""Sorting and keyset paging of the experiments list.

A sort key is a field (``created_at``), an option (``options.lr``), a score
(``results._scores.accuracy``) or a metric (``metrics.loss``: its last value;
``metrics.loss.min``, ``metrics.loss.max``), ``-`` in front for descending. Every field and
option key becomes one SQL expression that is never NULL (a missing value sorts as the
smallest: ``-infinity``, ``''``, JSON ``null``), with the id as tie-breaker, so ``(key, id)`` is
a total order and a page starts strictly after the last row of the one before: rows inserted
meanwhile never shift a page. A metric key and a score key (``results._scores.<name>``) read
indexed tables instead (the API's metric summary and ``result_scores``, see
``fleetlab_api.metrics.summary``); experiments without the value come after every one that has
it, in either direction. The cursor carries the sort, the last row's key value and its id.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetlab_api.errors import InvalidError
from fleetlab_common.api.experiments import Experiment

# field -> (SQL expression, SQL type of the cursor value)
FIELDS: dict[str, tuple[str, str]] = {
    "id": ("e.id", "uuid"),
    "created_at": ("e.created_at", "timestamptz"),
    "started_at": ("coalesce(e.started_at, '-infinity')", "timestamptz"),
    "finished_at": ("coalesce(e.finished_at, '-infinity')", "timestamptz"),
    "name": ("coalesce(e.name, '')", "text"),
    "status": ("e.status", "text"),
    "project": ("p.name", "text"),
    "agent_id": ("coalesce(e.agent_id, '')", "text"),
    "priority": ("e.priority::bigint", "bigint"),
    "attempt": ("e.attempt::bigint", "bigint"),
    "exit_code": ("coalesce(e.exit_code, -2147483649)", "bigint"),
}
# A key of a JSON path: any text without control characters (it travels as a query parameter,
# never spliced into SQL), so FGMachine's "Test Score" sorts as results._scores.Test Score.
_PATH_PART = re.compile(r"^[^\x00-\x1f\x7f]+$")
SORT_HELP = (
    "a field (" + ", ".join(FIELDS) + "), options.<name>, results.<path> "
    "(e.g. results._scores.accuracy) or metrics.<name>[.last|.min|.max], "
    "with '-' in front for descending"
)
# What a metric key may end with: the summary column it sorts or filters on.
METRIC_VALUES = ("last", "min", "max")


def split_metric(key: str) -> tuple[str, str]:
    """``loss`` -> (loss, last); ``loss.min`` -> (loss, min); ``val.loss`` -> (val.loss, last).
    A metric whose own name ends in ``.min`` is reached as ``<name>.min.last``."""
    name, dot, value = key.rpartition(".")
    if dot and name and value in METRIC_VALUES:
        return name, value
    return key, "last"


FILTER_HELP = (
    "<metric>[.last|.min|.max]<op><number>, op one of < <= > >= = != "
    "(e.g. loss<0.3, accuracy.max>=0.9)"
)
_FILTER = re.compile(r"^(?P<key>[^<>=!]+?)\s*(?P<op><=|>=|!=|<|>|=)\s*(?P<value>[^<>=!]+)$")


@dataclass(frozen=True)
class Sort:
    """A parsed ``sort``: the key as given (without ``-``), its SQL, and the direction."""

    key: str
    expr: str
    sql_type: str
    path: list[str] | None
    descending: bool
    # A metric sort: the metric's name (its summary column is ``expr``).
    metric: str | None = None
    # A score sort (results._scores.<name>): the score's name.
    score: str | None = None

    @property
    def token(self) -> str:
        return ("-" if self.descending else "") + self.key

    def value_of(self, experiment: Experiment) -> Any:
        """The key's value for one record, as the cursor stores it."""
        if self.path is not None:
            options = self.key.startswith("options.")
            source: Any = experiment.options if options else experiment.results
            for part in self.path:
                source = source.get(part) if isinstance(source, dict) else None
            return source
        if self.key == "project":
            return experiment.project
        value = getattr(experiment, self.key)
        if value is None:
            return {"name": "", "agent_id": ""}.get(self.key)
        if isinstance(value, datetime | uuid.UUID):
            return str(value)
        return value


def parse_sort(sort: str | None) -> Sort:
    """``-created_at``, ``options.lr``, ``-results._scores.accuracy``; newest first by default."""
    text = sort or "-id"
    descending = text.startswith("-")
    key = text.lstrip("-+")
    if key in FIELDS:
        expr, sql_type = FIELDS[key]
        return Sort(key, expr, sql_type, None, descending)
    head, _, rest = key.partition(".")
    if head in ("options", "results") and rest:
        parts = rest.split(".")
        if head == "options":
            parts = [rest]  # an option's name may itself hold dots ("model.depth")
        if all(_PATH_PART.match(p) for p in parts):
            column = "e.options::jsonb" if head == "options" else "e.results"
            # A missing value is JSON null, which jsonb orders before every other value.
            expr = f"coalesce({column} #> $PATH::text[], 'null'::jsonb)"
            score = parts[1] if len(parts) == 2 and parts[0] == "_scores" else None
            return Sort(key, expr, "jsonb", parts, descending, score=score)
    if head == "metrics" and rest:
        name, value = split_metric(rest)
        return Sort(key, value, "float8", None, descending, metric=name)
    raise InvalidError(f"cannot sort by {key!r}", {"sort": SORT_HELP})


def encode_cursor(sort: Sort, experiment: Experiment, value: Any = None) -> str:
    """The cursor after ``experiment``; a metric sort passes the row's ``value`` (None for
    an experiment without the metric)."""
    if sort.metric is None:
        value = sort.value_of(experiment)
    raw = json.dumps({"s": sort.token, "v": value, "id": str(experiment.id)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(sort: Sort, cursor: str) -> tuple[str, uuid.UUID]:
    """The (key value, id) a page starts after; 422 for a cursor of another sort."""
    bad = InvalidError("invalid cursor", {"cursor": "not a cursor from `next`"})
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        value, last_id = data["v"], uuid.UUID(data["id"])
        given_sort = data["s"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad from None
    if given_sort != sort.token:
        raise InvalidError(
            "invalid cursor: it was made for another sort",
            {"cursor": f"made for sort={given_sort!r}, not {sort.token!r}"},
        )
    # Sent as text and cast in SQL, so a missing time is PostgreSQL's own '-infinity'.
    if sort.metric is not None:
        # JSON text: a number, or null past the experiments that have the metric.
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise bad
        return json.dumps(value), last_id
    if sort.sql_type == "jsonb":
        return json.dumps(value), last_id
    if sort.sql_type == "timestamptz":
        if value is None:
            return "-infinity", last_id
        if not isinstance(value, str):
            raise bad
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise bad from None
        return value, last_id
    if sort.sql_type == "uuid":
        return str(last_id), last_id
    if sort.sql_type == "bigint":
        if value is None:
            return "-2147483649", last_id
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad
        return str(value), last_id
    if not isinstance(value, str):
        raise bad
    return value, last_id


# -- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricFilter:
    """``loss.min<0.3``: experiments whose metric ``name`` has ``value`` ``op`` ``bound``."""

    name: str
    value: str
    op: str
    bound: float


def parse_filters(texts: Sequence[str] | None) -> list[MetricFilter]:
    """``?metric=loss<0.3&metric=accuracy.max>=0.9`` (all must hold); 422 naming ``metric``."""
    filters: list[MetricFilter] = []
    for text in texts or ():
        match = _FILTER.match(text.strip())
        bound = math.nan
        if match is not None:
            try:
                bound = float(match["value"])
            except ValueError:
                match = None
        if match is None or not math.isfinite(bound):
            raise InvalidError(f"invalid metric filter {text!r}", {"metric": FILTER_HELP})
        name, value = split_metric(match["key"].strip())
        filters.append(MetricFilter(name, value, match["op"], bound))
    return filters


def filter_sql(filters: Sequence[MetricFilter], args: list[Any]) -> str:
    """SQL (ANDed, on ``e``) for ``filters``, appending their parameters to ``args``."""
    parts = []
    for f in filters:
        args += [f.name, f.bound]
        op = "<>" if f.op == "!=" else f.op
        # f.value and op come from fixed lists, never from the request's text as such.
        parts.append(
            f"EXISTS (SELECT 1 FROM metric_summary f WHERE f.experiment_id = e.id"
            f" AND f.name = ${len(args) - 1} AND f.{f.value} {op} ${len(args)})"
        )
    return " AND ".join(parts) or "TRUE"
