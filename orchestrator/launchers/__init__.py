"""Launchers: how a job reaches a machine. One module per backend behind `base.Launcher`, listed in `registry`."""

from __future__ import annotations

from .base import Launcher
from .registry import get_launcher

__all__ = ["Launcher", "get_launcher"]
