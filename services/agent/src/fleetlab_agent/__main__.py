"""``python -m fleetlab_agent``: run this machine's agent."""

from __future__ import annotations

import sys

from fleetlab_agent.app import create_app
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
    run_service("agent", settings, create_app)


if __name__ == "__main__":
    main()
