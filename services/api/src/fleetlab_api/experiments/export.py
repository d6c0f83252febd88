"""FGLab's table export: experiments as CSV (one column per option and score) or JSON."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from fleetlab_common.api.experiments import Experiment

FIXED = (
    "id",
    "project",
    "name",
    "status",
    "status_reason",
    "agent_id",
    "attempt",
    "exit_code",
    "created_at",
    "started_at",
    "finished_at",
    "tags",
    "notes",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def to_csv(experiments: list[Experiment]) -> str:
    """One row per experiment: the record's fields, then ``options.<name>`` (in the order
    they first appear) and ``results._scores.<name>``, then other result fields."""
    options: dict[str, None] = {}
    scores: dict[str, None] = {}
    results: dict[str, None] = {}
    for e in experiments:
        options.update(dict.fromkeys(e.options))
        raw = e.results.get("_scores")
        scores.update(dict.fromkeys(raw if isinstance(raw, dict) else {}))
        results.update(dict.fromkeys(k for k in e.results if k != "_scores"))
    header = [
        *FIXED,
        *(f"options.{k}" for k in options),
        *(f"results._scores.{k}" for k in scores),
        *(f"results.{k}" for k in results),
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for e in experiments:
        record = e.model_dump(mode="json")
        raw = e.results.get("_scores")
        score_values = raw if isinstance(raw, dict) else {}
        row = [_cell(";".join(e.tags)) if f == "tags" else _cell(record.get(f)) for f in FIXED]
        row += [_cell(e.options.get(k)) for k in options]
        row += [_cell(score_values.get(k)) for k in scores]
        row += [_cell(e.results.get(k)) for k in results]
        writer.writerow(row)
    return out.getvalue()
