"""Fleetlab webhooks service."""
