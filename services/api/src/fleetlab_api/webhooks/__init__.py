"""``/api/v1/webhooks``: the API side of the webhooks service (asked over NATS)."""
