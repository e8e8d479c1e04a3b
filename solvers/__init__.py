"""Samplers of the reverse process and the likelihood. Every sampler is called as
``solver(sde, score_fn, x_T, generator) -> (x_0, nfe)``."""
from .adaptive import AdaptiveSDE
from .common import CountedScore, GridState, Solver, SteppingSolver
from .fast import DDIM, DPMSolver, Heun
from .grids import FixedTimes, Fitted, Grid, Karras, Tuned, UniformLogSNR, UniformTime, make_grid
from .elbo import ELBO
from .likelihood import ODELikelihood
from .ode import ProbabilityFlowODE
from .stochastic import CORRECTORS, PREDICTORS, EulerMaruyama, PredictorCorrector

__all__ = ["AdaptiveSDE", "CountedScore", "Solver", "DDIM", "DPMSolver", "Heun", "EulerMaruyama",
           "PredictorCorrector", "ProbabilityFlowODE", "ODELikelihood", "ELBO", "PREDICTORS", "CORRECTORS",
           "make_grid", "SteppingSolver", "GridState", "Grid", "UniformTime", "UniformLogSNR", "Karras", "FixedTimes",
           "Tuned", "Fitted"]
