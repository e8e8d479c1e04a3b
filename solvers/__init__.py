"""Samplers of the reverse process and the likelihood. Every sampler is called as
``solver(sde, score_fn, x_T, generator) -> (x_0, nfe)``."""
from .common import CountedScore, Solver
from .likelihood import ODELikelihood, bits_per_dim, dequantize
from .ode import ProbabilityFlowODE
from .stochastic import CORRECTORS, PREDICTORS, EulerMaruyama, PredictorCorrector

__all__ = ["CountedScore", "Solver", "EulerMaruyama", "PredictorCorrector", "ProbabilityFlowODE",
           "ODELikelihood", "PREDICTORS", "CORRECTORS", "bits_per_dim", "dequantize"]
