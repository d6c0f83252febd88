"""The API's lifespan state (typed), reached from requests through ``deps``."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from faststream.nats import NatsBroker

from fleetlab_api.settings import ApiSettings
from fleetlab_common.artifacts import ArtifactStore
from fleetlab_common.db.outbox import OutboxRelay


@dataclass
class State:
    settings: ApiSettings
    broker: NatsBroker
    pool: asyncpg.Pool | None = None
    relay: OutboxRelay | None = None
    store: ArtifactStore | None = None
    secret: bytes = b""

    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("the API is not started")
        return self.pool

    def outbox(self) -> OutboxRelay:
        if self.relay is None:
            raise RuntimeError("the API is not started")
        return self.relay

    def artifacts(self) -> ArtifactStore:
        if self.store is None:
            raise RuntimeError("the API is not started")
        return self.store
