"""Identifiers: uuid7 everywhere, so ids sort by creation time."""

from __future__ import annotations

import uuid

import uuid_utils


def uuid7() -> uuid.UUID:
    """A new time-ordered UUID (version 7) as a standard-library UUID."""
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)
