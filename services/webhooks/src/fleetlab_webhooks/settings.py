"""Webhooks settings."""

from __future__ import annotations

from fleetlab_common.settings import CommonSettings


class WebhooksSettings(CommonSettings):
    """Settings of ``python -m fleetlab_webhooks``."""

    port: int = 5083
