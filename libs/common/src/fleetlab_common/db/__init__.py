"""PostgreSQL: the pool, the migration runner, the outbox and the inbox.

Postgres is the system of record: a service writes its state and the events that state implies
in one transaction (the outbox); a relay publishes them after commit. Consumers record each
event id they processed in the same transaction as its effect (the inbox), so a redelivery
changes nothing.
"""

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection as repositories take it: a plain one, or one borrowed from a pool.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy
