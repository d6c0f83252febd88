"""Sweeps: a grid or random search over a project's options, run as experiments (trials)."""
