"""Logstream's lifespan state, filled in at startup."""

from __future__ import annotations

from dataclasses import dataclass

from fleetlab_logstream.service import Logstream
from fleetlab_logstream.settings import LogstreamSettings


@dataclass
class State:
    settings: LogstreamSettings
    logstream: Logstream | None = None

    def get(self) -> Logstream:
        if self.logstream is None:
            raise RuntimeError("logstream is not started")
        return self.logstream
