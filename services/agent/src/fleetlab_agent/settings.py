"""Agent settings: ``FLEETLAB_NATS__URL`` is the only credential an agent holds."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from fleetlab_common.settings import CommonSettings

_TOKEN = re.compile(r"[^A-Za-z0-9_-]+")


def default_name() -> str:
    """The host name, made a valid NATS subject token."""
    return _TOKEN.sub("-", socket.gethostname()).strip("-") or "agent"


class AgentOptions(BaseModel):
    """``FLEETLAB_AGENT__*``."""

    name: str = Field(default_factory=default_name)
    slots: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # A comma list in the environment (FLEETLAB_AGENT__LABELS=gpu,a100), not JSON.
    labels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    work_dir: Path | None = None
    # FGMachine's projects.json: projects this agent runs with its own commands.
    projects: Path | None = None
    heartbeat_s: float = Field(default=2.0, gt=0)
    stop_grace_s: float = Field(default=10.0, ge=0)
    # Output lines are sent in batches: at most this many, at most this late (and about
    # 256 KiB, well under NATS's message limit). Larger batches cost every hop less per line.
    batch_lines: int = Field(default=2000, ge=1)
    batch_delay_s: float = 0.05
    # A run's output lines per second, at most (0: no bound). Over it, the agent reads the
    # run's pipes more slowly: the program waits on its prints, no line is dropped. One run
    # printing without end must not outrun the log store and its live viewers.
    log_lines_per_s: int = Field(default=120_000, ge=0)
    # What waits on disk for NATS at most; a full spool makes runs wait, never drops.
    spool_max_mb: int = Field(default=1024, ge=1)
    # The largest input one run may fetch (MachineLabs inputs).
    max_input_mb: int = Field(default=10240, ge=1)
    input_timeout_s: float = Field(default=300.0, gt=0)
    # The content caches (inputs and code snapshots) together, in MB: after each download the
    # least recently used entries go until they fit; what a run is being staged with stays.
    cache_max_mb: int = Field(default=10240, ge=0)
    # An address of this machine the other agents can reach: MASTER_ADDR of multi-worker
    # experiments whose rank 0 runs here. Default: the local address of the route to NATS.
    address: str | None = None
    # Resource use (CPU, memory, GPUs) of the machine and of each run, sampled this often.
    usage_interval_s: float = Field(default=5.0, gt=0)
    # A run's results folder (FGMachine's) is looked at this often.
    results_interval_s: float = Field(default=1.0, gt=0)

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        if not value or _TOKEN.search(value):
            raise ValueError("agent name may hold only letters, digits, '-' and '_'")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class AgentSettings(CommonSettings):
    """Settings of ``python -m fleetlab_agent``."""

    port: int = 5084
    agent: AgentOptions = Field(default_factory=AgentOptions)

    def spool_dir(self) -> Path:
        return self.work_root().parent / "spool"

    def work_root(self) -> Path:
        root = self.agent.work_dir or self.home / "agent" / self.agent.name / "work"
        return root.absolute()
