"""``python -m fleetlab_scheduler [migrate]``."""

from __future__ import annotations

from fleetlab_common.service import run_service
from fleetlab_scheduler.app import create_app, migrate
from fleetlab_scheduler.settings import SchedulerSettings


def main() -> None:
    run_service("scheduler", SchedulerSettings(), create_app, migrate)


if __name__ == "__main__":
    main()
