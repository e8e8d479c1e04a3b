"""Sampling with part of each point known: inpainting and colorization with any stepping solver."""
import torch

from sde import expand
from sde.errors import ConfigError, check_choice, check_int

from .base import CountedScore, GridState, SteppingSolver, check_eps, randn_like

METHODS = ("replace", "resample")


class Inpainter:
    """``inpainter(sde, score_fn, x_T, observation, generator) -> (x_0, nfe)``: ``solver`` (a stepping solver)
    carries x_T down its grid, and after every step the known part of x_t (``observation``, solvers.observe) is
    replaced by a fresh draw of its forward marginal a(t) x_o + s(t) z:

    - 'replace': that alone (Song et al. 2021's inpainter; with solver=pc its predictor–corrector form);
    - 'resample': each step is taken ``jumps`` times; between two tries x is carried back up from t_next to t by
      the exact forward transition x_t = α x_{t_next} + σ z, so the unknown part is drawn again from a state
      in which the known part has had its say (RePaint, Lugmayr et al. 2022, with jump length one step). NFE =
      jumps × the solver's.

    At the end the known part is set to the observed values themselves. A multistep solver's history is
    restored before each try, so a repeated step sees the history the first saw.
    """

    def __init__(self, solver, method="replace", jumps=1):
        if not isinstance(solver, SteppingSolver):
            raise ConfigError(f"inpainting steps over a time grid; {type(solver).__name__} is not a stepping solver: "
                              "choose em, pc, ddim, heun or dpm", "solver")
        self.solver = solver
        self.method = check_choice("method", method, METHODS)
        self.jumps = check_int("jumps", jumps)
        if self.method == "replace" and self.jumps != 1:
            raise ConfigError(f"jumps={self.jumps} needs method=resample (replace takes each step once)", "jumps")

    @torch.no_grad()
    def __call__(self, sde, score_fn, x, observation, generator=None):
        solver = self.solver
        score = CountedScore(score_fn)
        eps = check_eps(sde, solver.eps)
        state = GridState(sde, score, solver.times(sde, eps), x, generator)
        x = self.impose(state, observation, x, state.t[0])
        solver.start(state, x)
        for i in range(state.steps):
            state.i = i
            t, t_next = state.t[i], state.t[i + 1]
            history = list(state.history)
            for k in range(self.jumps):
                if k:
                    alpha, sigma = sde.transition(t, t_next)
                    x = expand(alpha, x) * x + expand(sigma, x) * randn_like(x, generator)
                    state.history = list(history)
                x = self.impose(state, observation, solver.step(state, x, t, t_next), t_next)
        if solver.denoise:
            x = sde.x0_from_score(x, score(x, state.t[-1]), state.t[-1])
        return observation.impose(x, 1.0, 0.0, torch.zeros_like(x)), score.nfe

    def planned_nfe(self, sde):
        """The solver's evaluations per step taken ``jumps`` times (``denoise``'s one once)."""
        planned = self.solver.planned_nfe(sde)
        return None if planned is None else (planned - int(self.solver.denoise)) * self.jumps + int(self.solver.denoise)

    @staticmethod
    def impose(state, observation, x, t):
        t = torch.as_tensor(t)
        return observation.impose(x, state.sde.a(t).to(x), state.sde.s(t).to(x), randn_like(x, state.generator))

    def __repr__(self):
        return f"Inpainter({self.solver!r}, method={self.method!r}, jumps={self.jumps})"
