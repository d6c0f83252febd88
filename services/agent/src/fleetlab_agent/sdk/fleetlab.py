"""Fleetlab's helper for experiment programs: ``import fleetlab``.

The agent puts this file on every run's ``PYTHONPATH``. It imports nothing beyond the
standard library (a program runs in its own environment), and outside Fleetlab it does
nothing harmful: with no ``FLEETLAB_METRICS_FILE`` set, calls are ignored.

    import fleetlab
    for step in range(100):
        fleetlab.log(step=step, loss=loss, accuracy=acc)
    fleetlab.result(accuracy=0.93)      # the run's _scores

Each call appends one JSON object as one line to ``$FLEETLAB_METRICS_FILE``; the agent
tails the file while the run goes and sends the points on. Writing the file by hand works
the same: ``{"step": 3, "loss": 0.21}`` per line (``step`` and ``ts`` optional).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

__all__ = ["log", "result"]

_lock = threading.Lock()


def _write(record: dict[str, object]) -> None:
    path = os.environ.get("FLEETLAB_METRICS_FILE")
    if not path:
        return
    line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
    # One write of a whole line in append mode: the agent never reads half a line as whole.
    with _lock, open(path, "a", encoding="utf-8") as f:  # noqa: PTH123 - stdlib only, by design
        f.write(line)


def _numbers(values: dict[str, object], what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, raw in values.items():
        if isinstance(raw, bool):
            raise TypeError(f"fleetlab.{what}: {key}={raw!r} is not a number")
        try:
            # numpy and torch scalars too: anything float() takes
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(f"fleetlab.{what}: {key}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"fleetlab.{what}: {key}={raw!r} is not finite")
        out[key] = value
    return out


def log(step: int | None = None, **metrics: object) -> None:
    """Record metric values, at ``step`` when given: ``fleetlab.log(step=3, loss=0.21)``."""
    record: dict[str, object] = {}
    if step is not None:
        record["step"] = int(step)
    record["ts"] = time.time()
    record.update(_numbers(metrics, "log"))
    _write(record)


def result(**scores: object) -> None:
    """Set the run's scores (FGLab's ``_scores``): ``fleetlab.result(accuracy=0.93)``."""
    _write({"_scores": _numbers(scores, "result")})
