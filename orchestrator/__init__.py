"""Sweep orchestrator for training speedruns: config -> study -> scheduler -> launcher -> parser -> DB -> export."""

__version__ = "0.1.0"
