"""Experiments: one option set of a project, queued, run on an agent, recorded."""
