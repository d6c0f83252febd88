"""The scheduler's lifespan state, filled in at startup."""

from __future__ import annotations

from dataclasses import dataclass

from fleetlab_scheduler.service import Scheduler
from fleetlab_scheduler.settings import SchedulerSettings


@dataclass
class State:
    settings: SchedulerSettings
    scheduler: Scheduler | None = None

    def get(self) -> Scheduler:
        if self.scheduler is None:
            raise RuntimeError("the scheduler is not started")
        return self.scheduler
