"""The fleetlab command, and the Python SDK: ``from fleetlab_cli import Client``."""

from fleetlab_cli.client import ApiError, AsyncClient, Client, plain

__all__ = ["ApiError", "AsyncClient", "Client", "plain"]
