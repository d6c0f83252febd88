"""Standard Webhooks signing (https://www.standardwebhooks.com/): secrets and headers."""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime

from standardwebhooks.webhooks import Webhook

PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh ``whsec_`` secret: 32 random bytes, base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not a usable Standard Webhooks secret, or None."""
    if not secret.startswith(PREFIX):
        return "must start with 'whsec_' followed by base64"
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return "the part after 'whsec_' is not base64"
    if not 24 <= len(key) <= 64:
        return "the key must be 24 to 64 bytes (32 recommended)"
    return None


def signed_headers(secret: str, message_id: str, at: datetime, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
    }
