"""Time grids fitted to a model. A fixed-step solver's few nodes λ_1 < ... < λ_{N−1} (λ = log(a/s), ends
held at λ(T) and λ(eps)) are moved one at a time, each to whichever nearby position brings the solver's
result on pilot trajectories closest to a fine solve of the same ODE:

    minimize over the nodes   L = mean over pilots x_T of |Φ_grid(x_T) − Φ_fine(x_T)|² / d.

Any deterministic solver Φ is thereby tuned for its own error, at its own budget, on the model it will
sample (in the spirit of Sabour et al. 2024, "Align Your Steps", by a direct greedy search). The search
starts from the best of the uniform-t, uniform-λ and ρ-spaced grids, so it is never worse than those on the
pilots; the cost is paid once per model and budget.
"""

from .grids import GRIDS, check_finite_log_snr, make_grid, times_at_log_snr

MOVES = (0.5, 0.25, 0.1)


def tune_grid(integrate, reference, sde, x_T, steps, eps, sweeps=5, min_gain=0.01, rho=7.0):
    """Fit ``steps`` + 1 times from T to eps for ``integrate(t, x_T) -> x_0`` against ``reference(x_T)``.

    A sweep tries, for each interior node, a move toward either neighbour by each fraction in MOVES of
    the gap to it, keeping the first that lowers L; it stops after ``sweeps`` sweeps or when one gains less
    than ``min_gain`` (relative). Returns (t, info): t in float64 on the CPU, and info = {start, loss_start,
    loss, solves} (``solves`` runs of ``integrate`` on the pilots, each costing ``steps`` evaluations).
    """
    check_finite_log_snr(sde, eps, "tuned")
    target = reference(x_T)

    def loss(t):
        return (integrate(t, x_T) - target).double().pow(2).mean().item()

    starts = {kind: make_grid(sde, steps, eps, kind, rho) for kind in GRIDS}
    losses = {kind: loss(t) for kind, t in starts.items()}
    start = min(losses, key=losses.get)
    lam, best, solves = sde.log_snr(starts[start]).double(), losses[start], len(starts)
    for _ in range(sweeps if steps > 1 else 0):
        before = best
        for fraction in MOVES:
            for j in range(1, steps):
                for side in (-1, 1):
                    trial = lam.clone()
                    trial[j] = lam[j] + fraction * (lam[j + side] - lam[j])
                    value = loss(times_at_log_snr(sde, trial, eps))
                    solves += 1
                    if value < best:
                        lam, best = trial, value
                        break
        if before - best < min_gain * before:
            break
    info = {"start": start, "loss_start": losses[start], "loss": best, "solves": solves}
    return times_at_log_snr(sde, lam, eps), info
