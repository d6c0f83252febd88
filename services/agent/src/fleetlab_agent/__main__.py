"""``python -m fleetlab_agent``: run this machine's agent."""

from __future__ import annotations

import sys

from fleetlab_agent.app import create_app
from fleetlab_agent.childwatch import install_pidfd_watcher
from fleetlab_agent.projects import ProjectsFileError, load_projects
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.service import run_service


def main() -> None:
    settings = AgentSettings()
    if settings.agent.projects is not None:
        try:
            load_projects(settings.agent.projects)
        except ProjectsFileError as exc:
            sys.exit(f"fleetlab agent: {exc}")
    # The standard event loop: it starts a run's process with posix_spawn (about 0.6 ms), where
    # uvloop forks the whole agent (7 to 13 ms, on the start path of every run).
    install_pidfd_watcher()
    run_service("agent", settings, create_app, loop="asyncio")


if __name__ == "__main__":
    main()
