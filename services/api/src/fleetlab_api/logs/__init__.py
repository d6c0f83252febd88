"""Experiments' output (stored, and followed live) and agents' own logs."""
