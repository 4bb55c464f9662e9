"""Parameter injection: one plug-in per trainer, behind the interface in `base`."""

from .base import Injection, InjectionError, Injector
from .registry import INJECTORS, get_injector

__all__ = ["Injection", "InjectionError", "Injector", "INJECTORS", "get_injector"]
