"""Log parsers: one adapter per trainer log format, behind the interface in `base`."""

from .base import LogAdapter, LogStream, MetricPoint, ParsedRun
from .registry import ADAPTERS, UnknownFormat, detect_format, get_adapter

__all__ = ["LogAdapter", "LogStream", "MetricPoint", "ParsedRun", "ADAPTERS", "UnknownFormat", "detect_format", "get_adapter"]
