"""Time grids from T down to eps: uniform in t, uniform in λ = log(a/s), or ρ-spaced in σ = s/a."""
import torch

from sde.errors import ConfigError, check_choice, check_int, check_number

GRIDS = ("time", "logsnr", "karras")
BISECTIONS = 100


def _bisect(fn, target, lo, hi):
    """t in [lo, hi] with fn(t) = target, for an increasing fn, by BISECTIONS halvings (vectorized over target)."""
    lo, hi = torch.full_like(target, lo), torch.full_like(target, hi)
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        below = fn(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def check_finite_log_snr(sde, eps, grid):
    """A grid placed in λ needs λ = log_snr finite at T and at eps (eps = 0 makes it infinite)."""
    lam = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    if not torch.isfinite(lam).all():
        raise ConfigError(f"grid={grid!r} needs a finite log_snr at both ends; log_snr(eps={eps}) = "
                          f"{lam[1].item()}: choose eps > 0", "grid")


def _grid64(sde, steps, eps, kind, rho):
    """make_grid in float64 on the CPU."""
    check_choice("grid", kind, GRIDS)
    if kind == "time":
        return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    log_sigma = -sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    if kind == "logsnr":
        check_finite_log_snr(sde, eps, kind)
        target = log_sigma[0] + u * (log_sigma[1] - log_sigma[0])
    else:
        if not torch.isfinite(log_sigma[0]):
            raise ConfigError(f"grid='karras' needs a finite sigma(T) = s/a; got {log_sigma[0].exp().item()}", "grid")
        root = torch.exp(log_sigma / rho)
        target = rho * torch.log(root[0] + u * (root[1] - root[0]))
    return times_at_log_snr(sde, -target, eps)


def times_at_log_snr(sde, lam, eps):
    """The times in [eps, T] where log_snr(t) = lam (float64, CPU), by bisection; the ends are set exactly."""
    t = _bisect(lambda t: -sde.log_snr(t), -lam.double(), eps, sde.T)
    t[0], t[-1] = sde.T, eps
    return t


def make_grid(sde, steps, eps, kind="time", rho=7.0, like=None):
    """steps + 1 times from sde.T down to eps: uniform in t ('time'), uniform in λ = log(a/s) ('logsnr'),
    or ρ-spaced in σ = s/a ('karras'): σ_i = (σ_max^{1/ρ} + i/steps (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.

    λ and σ are inverted by vectorized bisection on the monotone σ(t), in float64 on the CPU, once per solve
    (no device synchronization); the result has ``like``'s dtype and device (float64 on the CPU without it).
    """
    check_int("steps", steps)
    t = _grid64(sde, steps, float(eps), kind, check_number("rho", rho))
    return t if like is None else t.to(device=like.device, dtype=like.dtype)
