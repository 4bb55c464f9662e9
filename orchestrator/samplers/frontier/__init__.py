"""The frontier sampler: one model of all runs of a study (``model.py`` over ``gp.py``), the one pick rule
and the decision it settles (``decision.py``), the choice of the runs that settle it (``acquisition.py``),
and the Optuna sampler that asks for them (``sampler.py``). ``space.py`` holds the plain records they share.
See docs/search.md."""

from .decision import Recommendation, Rule, confirmation_runs, recommend
from .sampler import FrontierSampler
from .space import Observation, Param, SearchSpace

__all__ = ["FrontierSampler", "Observation", "Param", "Recommendation", "Rule", "SearchSpace",
           "confirmation_runs", "recommend"]
