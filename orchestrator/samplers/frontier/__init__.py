"""The frontier sampler: one model of all runs of a study (``model.py`` over ``gp.py``), the one pick rule
and the decision it settles (``decision.py``), and the Optuna sampler that asks for the runs that settle
it (``sampler.py``). ``space.py`` holds the plain records they share. See docs/search.md."""

from .decision import Recommendation, Rule, confirmation_runs, recommend
from .sampler import FrontierSampler
from .space import Observation, Param, SearchSpace

__all__ = ["FrontierSampler", "Observation", "Param", "Recommendation", "Rule", "SearchSpace",
           "confirmation_runs", "recommend"]
