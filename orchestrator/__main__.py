"""`python -m orchestrator ...` = the `orch` command (for machines where the package is on PYTHONPATH only)."""

from .cli.main import entry

entry()
