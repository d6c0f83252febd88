"""Experiments' metrics: posted points, series (downsampled or whole), measurements."""
