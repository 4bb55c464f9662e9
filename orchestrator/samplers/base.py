"""What a sampler declares to the rest of orch: its builder and its options model (a `SamplerPlugin`,
registered in one place, ``samplers/__init__.py``), and what the controller and the write-up may read
from it (`DecidingSampler`). Nothing outside ``samplers/`` names a sampler or reads an undeclared
attribute of one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import optuna
from pydantic import BaseModel

if TYPE_CHECKING:
    from ..config.study import StudySpec


@runtime_checkable
class DecidingSampler(Protocol):
    """A sampler that settles a decision and can say so: the controller stops asking for trials once
    `settled` is true; `recommendation` is the pick rule's answer over the study's runs (numbered below
    ``until_trial``), an object with ``as_dict()``."""

    def settled(self, study: optuna.Study) -> bool: ...

    def recommendation(self, study: optuna.Study, until_trial: int | None = None) -> Any: ...


@dataclass(frozen=True)
class SamplerPlugin:
    """A sampler as a study names it: ``build(spec, seed)`` makes the Optuna sampler from the validated
    ``options`` model (None: the options go to the sampler's constructor as they are)."""

    name: str
    build: Callable[["StudySpec", BaseModel | dict, "int | None"], optuna.samplers.BaseSampler]
    options: type[BaseModel] | None
    summary: str
