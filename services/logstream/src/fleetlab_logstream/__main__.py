"""``python -m fleetlab_logstream [migrate]``."""

from __future__ import annotations

from fleetlab_common.service import run_service
from fleetlab_logstream.app import create_app, migrate
from fleetlab_logstream.settings import LogstreamSettings


def main() -> None:
    run_service("logstream", LogstreamSettings(), create_app, migrate)


if __name__ == "__main__":
    main()
