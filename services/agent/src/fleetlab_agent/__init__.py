"""Fleetlab agent service."""
