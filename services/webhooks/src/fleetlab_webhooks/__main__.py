"""``python -m fleetlab_webhooks [migrate]``."""

from __future__ import annotations

from fleetlab_common.service import run_service
from fleetlab_webhooks.app import create_app, migrate
from fleetlab_webhooks.settings import WebhooksSettings


def main() -> None:
    run_service("webhooks", WebhooksSettings(), create_app, migrate)


if __name__ == "__main__":
    main()
