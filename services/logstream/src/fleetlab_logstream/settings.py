"""Logstream settings."""

from __future__ import annotations

from fleetlab_common.settings import CommonSettings


class LogstreamSettings(CommonSettings):
    """Settings of ``python -m fleetlab_logstream``."""

    port: int = 5082
    # A query answer stays under NATS's default 1 MiB payload limit.
    max_reply_bytes: int = 512 * 1024
