"""API tokens: made once, shown once, stored as a SHA-256 hash."""
