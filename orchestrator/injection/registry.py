"""The registry of injectors, by trainer name."""

from __future__ import annotations

from .base import InjectionError, Injector
from .modded_nanogpt import ModdedNanoGPTInjector
from .nanochat import NanochatInjector
from .parameter_golf import ParameterGolfInjector

INJECTORS: dict[str, Injector] = {
    injector.name: injector for injector in (ModdedNanoGPTInjector(), ParameterGolfInjector(), NanochatInjector())
}


def get_injector(name: str) -> Injector:
    try:
        return INJECTORS[name]
    except KeyError:
        raise InjectionError(
            f"unknown injector {name!r}; known injectors: {', '.join(sorted(INJECTORS))}"
        ) from None
