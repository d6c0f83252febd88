"""Agents, as the scheduler's registry knows them (MLBench's worker list)."""
