"""Fleetlab api service."""
