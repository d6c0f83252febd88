"""``python -m fleetlab_agent``: run this machine's agent."""

from __future__ import annotations

from fleetlab_agent.app import create_app
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.service import run_service


def main() -> None:
    run_service("agent", AgentSettings(), create_app)


if __name__ == "__main__":
    main()
