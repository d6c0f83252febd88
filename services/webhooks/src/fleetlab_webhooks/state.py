"""The webhooks process's lifespan state, filled in at startup."""

from __future__ import annotations

from dataclasses import dataclass

from fleetlab_webhooks.service import Webhooks
from fleetlab_webhooks.settings import WebhooksSettings


@dataclass
class State:
    settings: WebhooksSettings
    webhooks: Webhooks | None = None

    def get(self) -> Webhooks:
        if self.webhooks is None:
            raise RuntimeError("webhooks is not started")
        return self.webhooks
