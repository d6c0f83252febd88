"""Fleetlab logstream service."""
