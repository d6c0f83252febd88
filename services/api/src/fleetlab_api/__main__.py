"""``python -m fleetlab_api [migrate]``."""

from __future__ import annotations

from fleetlab_api.app import create_app, migrate
from fleetlab_api.settings import ApiSettings
from fleetlab_common.service import run_service


def main() -> None:
    run_service("api", ApiSettings(), create_app, migrate)


if __name__ == "__main__":
    main()
