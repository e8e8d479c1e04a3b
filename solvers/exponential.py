"""The weights of exponential integrators in λ = log(a/s): a step from λ_i to λ_{i+1} of

    d(x/s)/dλ = ρ e^{λ} P(λ)   (ρ = 1: the probability-flow ODE; ρ = 1 + η²: the reverse SDE's drift part)

takes P as the polynomial through the last data predictions D_i, D_{i−1}, … (SDE.x0_from_score) and integrates
it exactly against the exponential. exponential_weights states that integral once, for any ρ ≥ 0 and steps in
either direction (the likelihood runs up from eps to T; ρ = 0 is the plain integral of its divergence);
dpm_weights arranges it into DPM-Solver++'s table, with DPM-Solver++(2M)'s own rule at order 2.
"""
import math

import torch

SERIES_TERMS = 200


def moments(h, rho, count):
    """M_k = ∫_0^h e^{−ρ v} v^k dv for k < ``count`` (float64, h of any sign or +∞, ρ ≥ 0), shape (*h.shape, count):
    for ρ h > 0, M_k = k! ρ^{−k−1} P(k + 1, ρ h) (P the regularized lower incomplete gamma function); otherwise
    M_k = h^{k+1} Σ_m (−ρ h)^m / (m! (k + m + 1)), a series of terms of one sign."""
    h = torch.as_tensor(h, dtype=torch.float64)
    k = torch.arange(count, dtype=torch.float64)
    z = (rho * h)[..., None]
    positive = z > 0
    safe = torch.where(positive, z, torch.ones_like(z))
    by_gamma = torch.exp(torch.lgamma(k + 1) - (k + 1) * math.log(rho if rho > 0 else 1.0)) \
        * torch.special.gammainc(k + 1, safe)
    near = torch.where(positive, torch.zeros_like(z), -z)
    total, term = torch.zeros_like(near * k), torch.ones_like(near)
    for m in range(SERIES_TERMS):
        step = term / (k + m + 1)
        total = total + step
        if bool((step <= 1e-17 * total).all()):
            break
        term = term * near / (m + 1)
    finite = torch.where(positive, torch.zeros_like(z), h[..., None])
    return torch.where(positive, by_gamma, finite ** (k + 1) * total)


def exponential_weights(h, nodes, rho):
    """Weights w_j with  Σ_j w_j D_j = ∫_0^h e^{−ρ v} P(v) dv,  P the polynomial through (v_j, D_j), for nodes
    v_j = λ_{i+1} − λ_j (float64; the last dimension indexes j, leading dimensions are steps, matching h's shape):
    w solves the Vandermonde system Σ_j v_j^k w_j = M_k (moments), k < len(nodes)."""
    nodes = torch.as_tensor(nodes, dtype=torch.float64)
    k = torch.arange(nodes.shape[-1], dtype=torch.float64)
    vandermonde = nodes[..., None, :] ** k[:, None]
    return torch.linalg.solve(vandermonde, moments(h, rho, nodes.shape[-1])[..., None])[..., 0]


def dpm_weights(lam, a, orders):
    """Weights w (steps, 3) of the data predictions D_i, D_{i−1}, D_{i−2} in DPM-Solver++'s update
    x_{i+1} = (s_{i+1}/s_i) x_i + Σ_j w[i, j] D_{i−j}, at ρ = 1 with h = λ_{i+1} − λ_i:

        order 1 and 3:  a_{i+1} · exponential_weights(h, (λ_{i+1} − λ_{i−j})_j, 1), the exact λ-integral
        order 2:        a_{i+1} (1 − e^{−h}) (D_i + (D_i − D_{i−1}) / (2 r_0)),  r_0 = (λ_i − λ_{i−1}) / h

    Order 2 is DPM-Solver++(2M)'s own rule: the first-order weight on D extrapolated to the step's midpoint, equal
    to the exact integral to first order in h. The third-order row is the exact λ-integral, which the reference
    implementations (dpm-solver, diffusers) approximate, leaving their 3M second order."""
    h = lam[1:] - lam[:-1]
    previous = torch.cat([h[:1], h[:-1]])
    nodes = torch.stack([h, h + previous, h + previous + torch.cat([previous[:1], previous[:-1]])], 1)
    orders = torch.as_tensor(orders)
    weights = torch.zeros(len(h), 3, dtype=torch.float64)
    for k in (1, 3):
        rows = (orders == k) | ((orders == 2) & (k == 1))
        if rows.any():
            weights[rows, :k] = a[1:][rows, None] * exponential_weights(h[rows], nodes[rows, :k], 1.0)
    half = 0.5 * h / previous
    second = orders == 2
    weights[second] = weights[second, :1] * torch.stack([1 + half, -half, torch.zeros_like(h)], 1)[second]
    return weights


def adams_weights(lam, order):
    """Weights of the exponential Adams–Bashforth step from λ_i to λ_{i+1} (any direction), which takes D and
    the divergence integrand c as the polynomials through their values at the last k = min(order, i + 1) nodes
    λ_i, λ_{i−1}, …:

        Σ_j W[i, j] D_{i−j} = ∫_{λ_i}^{λ_{i+1}} e^{λ − λ_{i+1}} P_D(λ) dλ,   Σ_j Q[i, j] c_{i−j} = ∫_{λ_i}^{λ_{i+1}} P_c dλ,

    that is exponential_weights(h, nodes, ρ) at ρ = 1 and ρ = 0 (v = λ_{i+1} − λ). Shapes (steps, order)."""
    steps = len(lam) - 1
    W = torch.zeros(steps, order, dtype=torch.float64)
    Q = torch.zeros(steps, order, dtype=torch.float64)
    for i in range(steps):
        h = lam[i + 1] - lam[i]
        nodes = lam[i + 1] - lam[i - torch.arange(min(order, i + 1))]
        W[i, :len(nodes)] = exponential_weights(h, nodes, 1.0)
        Q[i, :len(nodes)] = exponential_weights(h, nodes, 0.0)
    return W, Q
