"""Fleetlab scheduler service."""
