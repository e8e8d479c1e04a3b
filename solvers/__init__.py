"""Samplers of the reverse process and the likelihood. Every sampler is called as
``solver(sde, score_fn, x_T, generator) -> (x_0, nfe)``."""
from .adaptive import AdaptiveSDE
from .common import CountedScore, Solver
from .fast import DDIM, DPMSolver, Heun
from .grids import make_grid
from .likelihood import ODELikelihood
from .ode import ProbabilityFlowODE
from .stochastic import CORRECTORS, PREDICTORS, EulerMaruyama, PredictorCorrector

__all__ = ["AdaptiveSDE", "CountedScore", "Solver", "DDIM", "DPMSolver", "Heun", "EulerMaruyama",
           "PredictorCorrector", "ProbabilityFlowODE", "ODELikelihood", "PREDICTORS", "CORRECTORS",
           "make_grid"]
