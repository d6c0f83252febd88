"""Sorting and keyset paging of the experiments list.

A sort key is a field (``created_at``), an option (``options.lr``) or a score
(``results._scores.accuracy``), ``-`` in front for descending. Every key becomes one SQL
expression that is never NULL (a missing value sorts as the smallest: ``-infinity``, ``''``,
JSON ``null``), with the id as tie-breaker, so ``(key, id)`` is a total order and a page starts
strictly after the last row of the one before: rows inserted meanwhile never shift a page.
The cursor carries the sort, the last row's key value and its id.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetlab_api.errors import InvalidError
from fleetlab_api.experiments.schemas import Experiment

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
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$|^_[A-Za-z0-9_]+$")
SORT_HELP = (
    "a field (" + ", ".join(FIELDS) + "), options.<name> or results.<path> "
    "(e.g. results._scores.accuracy), with '-' in front for descending"
)


@dataclass(frozen=True)
class Sort:
    """A parsed ``sort``: the key as given (without ``-``), its SQL, and the direction."""

    key: str
    expr: str
    sql_type: str
    path: list[str] | None
    descending: bool

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
            return Sort(key, expr, "jsonb", parts, descending)
    if head == "metrics":
        raise InvalidError(
            f"cannot sort by {key!r}: sorting by metrics is not available yet",
            {"sort": "metrics are not sortable yet; " + SORT_HELP},
        )
    raise InvalidError(f"cannot sort by {key!r}", {"sort": SORT_HELP})


def encode_cursor(sort: Sort, experiment: Experiment) -> str:
    raw = json.dumps({"s": sort.token, "v": sort.value_of(experiment), "id": str(experiment.id)})
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
