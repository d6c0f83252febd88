"""What the log routes answer and stream."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

# A late viewer of a long log gets this many first and last lines, and is told how many
# lines lie between (MachineLabs' behaviour).
DEFAULT_HEAD = 1000
DEFAULT_TAIL = 1000


class Skipped(BaseModel):
    """Lines a late viewer did not get: ``from_seq`` to ``to_seq``, ``skipped`` of them."""

    skipped: int
    from_seq: int
    to_seq: int


class LogEnd(BaseModel):
    """The run ended: the last event of a stream."""

    status: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    log_lines: int | None = None


class AgentLogLine(BaseModel):
    id: int
    ts: datetime
    level: str
    line: str


class AgentLogPage(BaseModel):
    """An agent's own log lines, oldest first; pass ``before_id`` for the older page."""

    agent_id: str
    lines: list[AgentLogLine] = Field(default_factory=list)
    before_id: int | None = None
