"""Fleetlab's shared library: imported by every service, never run on its own."""

__version__ = "0.1.0"
