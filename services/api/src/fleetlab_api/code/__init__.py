"""Code snapshots: ``POST /api/v1/code`` and what experiments and agents do with them."""
