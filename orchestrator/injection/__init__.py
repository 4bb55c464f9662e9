"""Parameter injection: one plug-in per trainer, behind the interface in `base`."""

from ._script_scan import env_var_types
from .base import Injection, InjectionError, Injector
from .registry import INJECTORS, get_injector

__all__ = ["Injection", "InjectionError", "Injector", "INJECTORS", "env_var_types", "get_injector"]
