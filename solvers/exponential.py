"""The weights of exponential integrators in λ = log(a/s): a step from λ_i to λ_{i+1} of

    d(x/s)/dλ = ρ e^{λ} P(λ)   (ρ = 1: the probability-flow ODE; ρ = 1 + η²: the reverse SDE's drift part)

takes P as the polynomial through the last data predictions D_i, D_{i−1}, … (SDE.x0_from_score) and integrates
it exactly against the exponential. exponential_weights states the integral once, by its moments; dpm_weights is
its closed form for DPM-Solver++'s orders 1 and 3 (and DPM-Solver++(2M)'s rule at order 2); adams_weights is the
same integral at ρ = 1 by quadrature, for steps in either direction (the likelihood runs up from eps to T),
with the plain integral ∫ P dλ of the divergence beside it.
"""
import math

import numpy as np
import torch

QUADRATURE_NODES = 16


def exponential_weights(h, nodes, rho):
    """Weights w_j with  Σ_j w_j D_j = ρ ∫_0^h e^{−ρ v} P(v) dv,  P the polynomial through (v_j, D_j), for
    ``nodes`` v_j = λ_{i+1} − λ_j ≥ 0 (float64 tensors): with the moments
    M_k = ρ ∫_0^h e^{−ρ v} v^k dv = k! ρ^{−k} P(k + 1, ρ h) (P the regularized lower incomplete gamma function),
    w solves the Vandermonde system Σ_j v_j^k w_j = M_k, k < len(nodes)."""
    k = torch.arange(len(nodes), dtype=torch.float64)
    moments = torch.exp(torch.lgamma(k + 1) - k * math.log(rho)) * torch.special.gammainc(k + 1, rho * h)
    vandermonde = nodes[None, :] ** k[:, None]
    return torch.linalg.solve(vandermonde, moments)


def dpm_weights(lam, a, orders):
    """Weights w (steps, 3) of the data predictions D_i, D_{i−1}, D_{i−2} in DPM-Solver++'s update
    x_{i+1} = (s_{i+1}/s_i) x_i + Σ_j w[i, j] D_{i−j}; with h = λ_{i+1} − λ_i, r_k = h_{i−k−1}/h, φ_1 = e^{−h} − 1,
    φ_2 = φ_1/h + 1, φ_3 = φ_2/h − 1/2 and the divided differences Δ_0 = (D_i − D_{i−1})/r_0,
    Δ_1 = (D_{i−1} − D_{i−2})/r_1:

        order 1:  −a φ_1 D_i
        order 2:  −a φ_1 (D_i + Δ_0 / 2)
        order 3:  −a φ_1 D_i + a φ_2 (Δ_0 + r_0/(r_0 + r_1) (Δ_0 − Δ_1)) − 2 a φ_3 (Δ_0 − Δ_1)/(r_0 + r_1)

    (Δ_0 − Δ_1)/(r_0 + r_1) ≈ h² D''/2, and the λ-integral needs −a φ_3 h² D'': hence the 2, which the reference
    implementations (dpm-solver, diffusers) omit, leaving their 3M second order.

    Rows of order 1 and 3 are a_{i+1} · exponential_weights(h, v, 1) in closed form: with P the polynomial through
    the nodes in Newton's form about λ_i, P(λ_i + τ) = D_i + τ P' + τ² P''/2, the integral
    ∫_0^h e^{τ − h} P(λ_i + τ) dτ = −φ_1 D_i + h φ_2 P' − h² φ_3 P'' term by term (∫ e^{τ−h} = −φ_1,
    ∫ τ e^{τ−h} = h φ_2, ∫ τ²/2 e^{τ−h} = −h² φ_3), and h P' = Δ_0 + r_0 (Δ_0 − Δ_1)/(r_0 + r_1),
    h² P'' = 2 (Δ_0 − Δ_1)/(r_0 + r_1) are the divided differences above. The row of order 2 is DPM-Solver++(2M)'s
    own rule, −φ_1/2 in place of the exact h φ_2 (equal to first order in h), not the exact integral.
    """
    h = lam[1:] - lam[:-1]
    h1 = torch.cat([h[:1], h[:-1]])
    h2 = torch.cat([h1[:1], h1[:-1]])
    r0, r1 = h1 / h, h2 / h
    an = a[1:]
    phi1 = torch.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    zero = torch.zeros_like(h)
    delta0 = torch.stack([1 / r0, -1 / r0, zero], 1)
    delta1 = torch.stack([zero, 1 / r1, -1 / r1], 1)
    first = torch.stack([-an * phi1, zero, zero], 1)
    second = first - 0.5 * (an * phi1)[:, None] * delta0
    diff = (delta0 - delta1) / (r0 + r1)[:, None]
    third = first + (an * phi2)[:, None] * (delta0 + r0[:, None] * diff) - 2 * (an * phi3)[:, None] * diff
    k = torch.tensor(orders)[:, None]
    return torch.where(k == 1, first, torch.where(k == 2, second, third))


def adams_weights(lam, order):
    """Weights of the exponential Adams–Bashforth step from λ_i to λ_{i+1} (any direction), which takes D and
    the divergence integrand c as the polynomials through their values at the last k = min(order, i + 1) nodes
    λ_i, λ_{i−1}, …  (Lagrange basis L_j):

        W[i, j] = ∫_{λ_i}^{λ_{i+1}} e^{λ − λ_{i+1}} L_j(λ) dλ,     Q[i, j] = ∫_{λ_i}^{λ_{i+1}} L_j(λ) dλ,

    by Gauss–Legendre quadrature (exact to rounding for steps of a few units in λ). Shapes (steps, order)."""
    u, w = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(QUADRATURE_NODES))
    steps = len(lam) - 1
    W = torch.zeros(steps, order, dtype=torch.float64)
    Q = torch.zeros(steps, order, dtype=torch.float64)
    for i in range(steps):
        nodes = lam[i - torch.arange(min(order, i + 1))]
        half = 0.5 * (lam[i + 1] - lam[i])
        at, wq = lam[i] + half * (u + 1), half * w
        for j in range(len(nodes)):
            basis = torch.ones_like(at)
            for k in range(len(nodes)):
                if k != j:
                    basis = basis * (at - nodes[k]) / (nodes[j] - nodes[k])
            W[i, j] = (wq * torch.exp(at - lam[i + 1]) * basis).sum()
            Q[i, j] = (wq * basis).sum()
    return W, Q
