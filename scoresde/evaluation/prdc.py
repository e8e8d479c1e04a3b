"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020) of generated
features against real ones, in any feature space: an image network's features, or the data themselves.

Each real row r has the ball B(r, ρ_k(r)) whose radius is the distance to its k-th nearest other real row; the
real manifold is their union, and likewise for the generated rows. With N real and M generated rows:

    precision = (1/M) Σ_j 1[f_j ∈ ∪_i B(r_i, ρ_k(r_i))]       (generated rows inside the real manifold)
    recall    = (1/N) Σ_i 1[r_i ∈ ∪_j B(f_j, ρ_k(f_j))]       (real rows inside the generated manifold)
    density   = (1/(k M)) Σ_j Σ_i 1[f_j ∈ B(r_i, ρ_k(r_i))]   (ball memberships, robust to outlying real rows)
    coverage  = (1/N) Σ_i 1[∃ j: f_j ∈ B(r_i, ρ_k(r_i))]       (real balls that hold a generated row)

Dropping a mode lowers recall and coverage; spreading samples off the data lowers precision and density.
"""
import torch

from sde.errors import ConfigError, check_int

PRECISION_RECALL_K = 3
DENSITY_COVERAGE_K = 5


def _rows(x, name):
    x = torch.as_tensor(x)
    if x.ndim < 2 or len(x) < 2:
        raise ConfigError(f"{name} must hold at least 2 rows of features (N, F) or points (N, ...); got shape "
                          f"{tuple(x.shape)}")
    x = x.reshape(len(x), -1)
    return x if x.dtype == torch.float64 else x.float()


def _distances(a, b, chunk):
    """Yields (start, D) with D the Euclidean distances of a[start:start + chunk] to every row of b."""
    for start in range(0, len(a), chunk):
        yield start, torch.cdist(a[start: start + chunk], b)


def neighbour_radii(x, ks, chunk=1024):
    """ρ_k(x_i) for each k of ``ks``: the distance of each row of x to its k-th nearest other row (itself at
    distance 0 is the first); a tensor (len(ks), N)."""
    ks = [check_int("k", k) for k in ks]
    if max(ks) >= len(x):
        raise ConfigError(f"k={max(ks)} needs more than {max(ks)} rows; got {len(x)}", "k")
    radii = torch.empty(len(ks), len(x), dtype=x.dtype, device=x.device)
    index = torch.tensor(ks, device=x.device)
    for start, d in _distances(x, x, chunk):
        nearest = d.topk(max(ks) + 1, dim=1, largest=False).values
        radii[:, start: start + len(d)] = nearest[:, index].T
    return radii


def prdc(real, fake, k=PRECISION_RECALL_K, k_density=DENSITY_COVERAGE_K, chunk=1024):
    """{"precision", "recall"} with neighbourhoods of ``k`` rows and {"density", "coverage"} with ``k_density``
    rows (the papers' 3 and 5) of the generated rows ``fake`` against the real rows ``real`` (float32, or
    float64 when both are)."""
    real = _rows(real, "the real features")
    fake = _rows(fake, "the generated features").to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ConfigError(f"real features of width {real.shape[1]} and generated features of width {fake.shape[1]} "
                          "cannot be compared")
    if real.dtype != fake.dtype:
        real, fake = real.float(), fake.float()
    with torch.no_grad():
        real_radius, density_radius = neighbour_radii(real, (k, k_density), chunk)
        fake_radius = neighbour_radii(fake, (k,), chunk)[0]
        in_real = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
        memberships = torch.zeros((), dtype=torch.long, device=real.device)
        recalled = torch.zeros(len(real), dtype=torch.bool, device=real.device)
        covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
        for start, d in _distances(fake, real, chunk):
            in_real[start: start + len(d)] = (d <= real_radius).any(1)
            recalled |= (d <= fake_radius[start: start + len(d), None]).any(0)
            inside = d <= density_radius
            memberships += inside.sum()
            covered |= inside.any(0)
    return {"precision": in_real.double().mean().item(), "recall": recalled.double().mean().item(),
            "density": memberships.item() / (k_density * len(fake)), "coverage": covered.double().mean().item()}
