"""The frontier sampler: one model of all runs of a study (``model.py`` over ``gp.py``), the one pick rule
and the decision it settles (``decision.py``), the choice of the runs that settle it (``acquisition.py``),
and the Optuna sampler that asks for them (``sampler.py``). ``space.py`` holds the plain records they share.
See docs/search.md.

The names below load on first use (PEP 562): the model needs scipy, and this package is imported by every `orch`
command (through the sampler options each one validates), which would otherwise pay ~0.3 s of start-up for it."""

from importlib import import_module

_HOMES = {"Recommendation": "decision", "confirmation_runs": "decision", "recommend": "decision",
          "FrontierSampler": "sampler", "Observation": "space", "Param": "space", "Rule": "space",
          "SearchSpace": "space"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
