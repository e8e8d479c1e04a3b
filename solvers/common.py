"""What every solver shares: the score-call counter, the time grid, checks and the final denoising step."""
import torch

from sde import expand
from sde.errors import invalid


class CountedScore:
    """Wraps score_fn(x, t) to count its evaluations (NFE) and give it per-sample times of shape (N,)."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x, t):
        self.nfe += 1
        t = torch.as_tensor(t, dtype=time_dtype(x), device=x.device)
        return self.score_fn(x, t.expand(x.shape[0]) if t.ndim == 0 else t)


def time_dtype(x):
    """Times are held in x's dtype, but never below float32 (bfloat16 would round T = 0.999 to 1)."""
    return torch.promote_types(x.dtype, torch.float32)


def time_grid(sde, steps, eps, x):
    """steps + 1 times from T down to eps, uniform in t."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=time_dtype(x), device=x.device)


def tweedie_denoise(sde, score, x, t):
    """E[x_0 | x_t] = (x_t + s(t)² ∇log p_t(x_t)) / a(t)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return (x + expand(sde.s(t) ** 2, x) * score(x, t)) / expand(sde.a(t), x)


def check_eps(sde, eps):
    """The end time of sampling: eps if given, else the SDE's own sampling_eps."""
    eps = sde.sampling_eps if eps is None else float(eps)
    if not 0 <= eps < sde.T:
        raise invalid("eps", eps, f"0 <= eps < T = {sde.T}")
    return eps


class Solver:
    """A sampler: ``solver(sde, score_fn, x_T, generator) -> (x_0, nfe)``, x_T drawn from the prior.

    ``eps`` is the time sampling stops at (default: the SDE's ``sampling_eps``); ``denoise`` adds a
    last Tweedie step x_0 = (x + s² score) / a at eps (one more evaluation).
    """

    def __init__(self, eps=None, denoise=False):
        self.eps = eps
        self.denoise = bool(denoise)

    @torch.no_grad()
    def __call__(self, sde, score_fn, x, generator=None):
        score = CountedScore(score_fn)
        eps = check_eps(sde, self.eps)
        x = self.solve(sde, score, x, eps, generator)
        if self.denoise:
            x = tweedie_denoise(sde, score, x, eps)
        return x, score.nfe

    def solve(self, sde, score, x, eps, generator):
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def randn_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
