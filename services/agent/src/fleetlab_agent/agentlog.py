"""The agent's own log, shipped to logstream (``GET /api/v1/agents/{id}/logs``).

A logging handler beside the agent's normal one keeps the rendered lines in a bounded queue;
a loop sends them every ``interval_s`` as ``agent.agentlog.appended.<agent_id>``. Best effort:
when NATS is away the oldest lines give way (``dropped`` says how many), and a failed send is
not logged again through this handler (that would feed itself).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from datetime import UTC, datetime

from faststream.nats import NatsBroker

from fleetlab_common.broker import publish_event
from fleetlab_common.events import AgentLogAppended, AgentLogLine

# Lines sent per message, and lines held at most while NATS is away.
BATCH_LINES = 1000
MAX_HELD = 10_000
# A single log line longer than this is cut.
MAX_LINE_CHARS = 8 * 1024


class AgentLogShipper(logging.Handler):
    """Collects the agent's log records; :meth:`run` sends them."""

    def __init__(
        self,
        broker: NatsBroker,
        agent_id: str,
        instance_id: uuid.UUID,
        *,
        interval_s: float = 1.0,
        level: int = logging.INFO,
    ) -> None:
        super().__init__(level)
        self.broker = broker
        self.agent_id = agent_id
        self.instance_id = instance_id
        self.interval_s = interval_s
        self.held: deque[AgentLogLine] = deque(maxlen=MAX_HELD)
        self.dropped = 0
        root_handlers = logging.getLogger().handlers
        if root_handlers and root_handlers[0].formatter is not None:
            self.setFormatter(root_handlers[0].formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be rendered is not worth a crash
            return
        if len(self.held) == MAX_HELD:
            self.dropped += 1
        self.held.append(
            AgentLogLine(
                ts=datetime.fromtimestamp(record.created, UTC),
                level=record.levelname.lower(),
                line=text[:MAX_LINE_CHARS],
            )
        )

    async def flush_once(self) -> int:
        """Send what is held; returns how many lines went out."""
        sent = 0
        while self.held:
            lines = [self.held.popleft() for _ in range(min(BATCH_LINES, len(self.held)))]
            event = AgentLogAppended(
                agent_id=self.agent_id,
                instance_id=self.instance_id,
                lines=lines,
                dropped=self.dropped,
            )
            try:
                await publish_event(self.broker, event, timeout=2.0)
            except Exception:
                # Put them back (newest kept if the queue fills meanwhile) and try later.
                self.held.extendleft(reversed(lines))
                return sent
            self.dropped = 0
            sent += len(lines)
        return sent

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush_once()


def install(broker: NatsBroker, agent_id: str, instance_id: uuid.UUID) -> AgentLogShipper:
    """Add the shipper to the root logger (beside the agent's own handler)."""
    shipper = AgentLogShipper(broker, agent_id, instance_id)
    logging.getLogger().addHandler(shipper)
    return shipper
