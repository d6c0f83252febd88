"""The agent process: an ASGI app serving ``/healthz``, with the NATS broker inside."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from fleetlab_agent import agentlog, childwatch, handlers
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import ensure_streams, make_broker
from fleetlab_common.log import get_logger
from fleetlab_common.service import Background, healthz_handler

log = get_logger(__name__)


def create_app(settings: AgentSettings) -> AsgiFastStream:
    """Build the agent. Nothing starts until the ASGI lifespan does."""
    broker = make_broker(settings.nats, f"agent-{settings.agent.name}")
    agent = Agent(settings, broker)
    background = Background()
    handlers.register(broker, agent)

    async def components() -> dict[str, str]:
        return {"nats": "ok" if await broker.ping(1.0) else "down"}

    async def prepare() -> None:
        childwatch.attach_to_running_loop()
        settings.work_root().mkdir(parents=True, exist_ok=True)
        agent.reaper.start()

    async def started() -> None:
        await ensure_streams(broker.connection.jetstream(), settings.nats)
        agent.spool.start()
        background.spawn("heartbeat", agent.heartbeat_loop)
        background.spawn("usage", agent.usage_loop)
        shipper = agentlog.install(broker, agent.name, agent.instance_id)
        background.spawn("agent-log", shipper.run)
        log.info(
            "agent.ready",
            agent_id=agent.name,
            instance_id=str(agent.instance_id),
            slots=settings.agent.slots,
            work_root=str(settings.work_root()),
        )

    async def stopping() -> None:
        await agent.shutdown()
        await background.stop()

    return AsgiFastStream(
        broker,
        asgi_routes=[("/healthz", healthz_handler("agent", components))],
        on_startup=[prepare],
        after_startup=[started],
        on_shutdown=[stopping],
    )
