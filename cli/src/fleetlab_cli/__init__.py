"""The fleetlab command."""
