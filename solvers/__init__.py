"""Samplers of the reverse process and the likelihood. Every sampler is called as
``solver(sde, score_fn, x_T, generator) -> (x_0, nfe)``; a grid is a value (solvers.grids), and fitting a grid to a
model is a step above the solvers (solvers.fitting)."""
from .adaptive import AdaptiveSDE
from .base import CountedScore, GridState, Solver, SteppingSolver
from .deterministic import DDIM, DPMSolver, Heun
from .distilled import ConsistencySampler
from .elbo import ELBO
from .fitting import FitGrid, TuneGrid, fallback, fit_solver, save_grid
from .grids import FixedTimes, FlooredLogSNR, Grid, GridRecipe, Karras, UniformLogSNR, UniformTime, make_grid
from .likelihood import ODELikelihood
from .ode import ProbabilityFlowODE
from .stochastic import CORRECTORS, PREDICTORS, EulerMaruyama, PredictorCorrector, SDEDPMSolver

__all__ = ["AdaptiveSDE", "ConsistencySampler", "CountedScore", "Solver", "DDIM", "DPMSolver", "Heun", "EulerMaruyama",
           "PredictorCorrector", "SDEDPMSolver", "ProbabilityFlowODE", "ODELikelihood", "ELBO", "PREDICTORS",
           "CORRECTORS", "make_grid", "SteppingSolver", "GridState", "Grid", "GridRecipe", "UniformTime",
           "UniformLogSNR", "Karras", "FlooredLogSNR", "FixedTimes", "FitGrid", "TuneGrid", "fit_solver",
           "fallback", "save_grid"]
