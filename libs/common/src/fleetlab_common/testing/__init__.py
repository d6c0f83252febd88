"""Test support: a pytest plugin whose fixtures start real servers once per session."""
