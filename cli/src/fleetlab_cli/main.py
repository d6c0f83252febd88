"""The ``fleetlab`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetlab_cli import commands, run, sweeps

app = typer.Typer(
    help="Fleetlab: run machine-learning experiments on a fleet of machines.", no_args_is_help=True
)


@app.command()
def up(
    home: Annotated[Path, typer.Option(envvar="FLEETLAB_HOME", help="Data directory.")] = Path(
        ".fleetlab"
    ),
    port: Annotated[
        int, typer.Option(envvar="FLEETLAB_PORT", help="HTTP port (127.0.0.1).")
    ] = 5080,
) -> None:
    """Run the whole system on this machine (embedded NATS and PostgreSQL by default)."""
    from fleetlab_cli.supervisor import run_up

    raise typer.Exit(run_up(home, port))


@app.command()
def migrate() -> None:
    """Apply every service's database migrations once, then exit."""
    for name in ("api", "scheduler", "logstream", "webhooks"):
        result = subprocess.run([sys.executable, "-m", f"fleetlab_{name}", "migrate"], check=False)
        if result.returncode != 0:
            typer.echo(f"migrations of {name} failed", err=True)
            raise typer.Exit(result.returncode)


@app.command()
def agent(
    nats: Annotated[
        str | None, typer.Option(help="NATS URL (the agent's only credential).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Agent name (default: host name).")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated labels, e.g. gpu,a100.")
    ] = None,
    slots: Annotated[int | None, typer.Option(help="Experiments run at once.")] = None,
    projects: Annotated[
        Path | None, typer.Option(help="FGMachine projects.json: projects run with local commands.")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="This machine's address other agents reach (MASTER_ADDR of multi-worker "
            "runs; default: its address on the route to NATS)."
        ),
    ] = None,
) -> None:
    """Run this machine's agent."""
    env = dict(os.environ)
    for key, value in (
        ("FLEETLAB_NATS__URL", nats),
        ("FLEETLAB_AGENT__NAME", name),
        ("FLEETLAB_AGENT__LABELS", labels),
        ("FLEETLAB_AGENT__SLOTS", None if slots is None else str(slots)),
        ("FLEETLAB_AGENT__PROJECTS", None if projects is None else str(projects.resolve())),
        ("FLEETLAB_AGENT__ADDRESS", address),
    ):
        if value is not None:
            env[key] = value
    os.execve(sys.executable, [sys.executable, "-m", "fleetlab_agent"], env)  # noqa: S606


commands.register(app)
sweeps.register(app)
run.register(app)


if __name__ == "__main__":
    app()
