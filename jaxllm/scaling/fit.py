"""Fitting scaling laws to measured losses: IsoFLOP parabolas, power laws in compute, the parametric L(N, D).

For: turning (N, D, final loss) triples from a sweep into N_opt(C), D_opt(C) and E + A/N^alpha + B/D^beta, the way
Hoffmann et al. 2022 do (Approaches 2 and 3). Not for: running the sweep (jaxllm.scaling.sweep). numpy only: the
5-parameter fit is small enough for a hand-written BFGS, so no scipy dependency.
"""

from __future__ import annotations

import numpy as np

from jaxllm.scaling.laws import LossLaw


def isoflop_minimum(x: np.ndarray, loss: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Fits loss = c2·x^2 + c1·x + c0 at one budget, x = ln N (or ln D). Returns (x at the minimum, loss there,
    the coefficients highest first). Raises ValueError when the points do not curve upwards (Approach 2 needs a
    minimum)."""
    if len(x) < 3:
        raise ValueError(f"{len(x)} points: a parabola needs at least 3 model sizes")
    coeffs = np.polyfit(x, loss, 2)
    if coeffs[0] <= 0:
        raise ValueError("the losses do not curve upwards: no minimum inside this budget's sizes")
    x_min = -coeffs[1] / (2 * coeffs[0])
    return float(x_min), float(np.polyval(coeffs, x_min)), coeffs


def power_law(flops: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares in log-log space: y = k·C^exponent. Returns (exponent, k)."""
    exponent, log_k = np.polyfit(np.log(flops), np.log(y), 1)
    return float(exponent), float(np.exp(log_k))


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of each residual and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def _objective(theta: np.ndarray, log_n, log_d, log_loss, delta: float) -> tuple[float, np.ndarray]:
    """Hoffmann et al. 2022, eq. 15: sum of Huber(LSE(a - alpha·ln N, b - beta·ln D, e) - ln L) over runs, with
    A = exp(a), B = exp(b), E = exp(e); theta = (a, b, e, alpha, beta). Returns the value and its gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, runs)
    top = terms.max(axis=0)
    weights = np.exp(terms - top)  # softmax of the three terms: d LSE / d term
    lse = top + np.log(weights.sum(axis=0))
    weights /= weights.sum(axis=0)
    value, slope = _huber(lse - log_loss, delta)
    grad = np.array(
        [
            slope @ weights[0],
            slope @ weights[1],
            slope @ weights[2],
            -slope @ (weights[0] * log_n),
            -slope @ (weights[1] * log_d),
        ]
    )
    return float(value.sum()), grad


def _bfgs(fun, x: np.ndarray, iters: int = 2000) -> tuple[np.ndarray, float]:
    """Minimises fun(x) -> (value, gradient) with BFGS and a backtracking (Armijo) line search."""
    value, grad = fun(x)
    inv_hessian = np.eye(len(x))
    for _ in range(iters):
        direction = -inv_hessian @ grad
        if grad @ direction >= 0:  # not a descent direction: the curvature estimate went stale, restart it
            inv_hessian, direction = np.eye(len(x)), -grad
        step = 1.0
        while True:
            x_new = x + step * direction
            value_new, grad_new = fun(x_new)
            if value_new <= value + 1e-4 * step * (grad @ direction) or step < 1e-14:
                break
            step *= 0.5
        s, y = x_new - x, grad_new - grad
        x, value, grad = x_new, value_new, grad_new
        if np.abs(s).max() < 1e-13:
            break
        if s @ y > 1e-20:
            rho = 1 / (s @ y)
            left = np.eye(len(x)) - rho * np.outer(s, y)
            inv_hessian = left @ inv_hessian @ left.T + rho * np.outer(s, s)
    return x, value


def fit_loss_law(n_params, n_tokens, loss, delta: float = 1e-3, starts: int = 4) -> LossLaw:
    """Fits L(N, D) = E + A/N^alpha + B/D^beta by Huber loss on log values (Hoffmann et al. 2022, Approach 3).

    Hoffmann et al. run L-BFGS from a grid of starts; here the starts come cheaper: for fixed (alpha, beta) the law
    is linear in (E, A, B), so least squares over a grid of exponents gives the `starts` best positive (E, A, B),
    and BFGS refines all five parameters from each."""
    log_n, log_d, log_loss = (np.log(np.asarray(v, dtype=np.float64)) for v in (n_params, n_tokens, loss))
    loss = np.exp(log_loss)
    candidates = []
    for alpha in np.linspace(0.05, 1.5, 30):
        for beta in np.linspace(0.05, 1.5, 30):
            design = np.stack([np.ones_like(log_n), np.exp(-alpha * log_n), np.exp(-beta * log_d)], axis=1)
            coef = np.linalg.lstsq(design, loss, rcond=None)[0]  # (E, A, B)
            if np.all(coef > 0):
                theta = np.array([np.log(coef[1]), np.log(coef[2]), np.log(coef[0]), alpha, beta])
                candidates.append((_objective(theta, log_n, log_d, log_loss, delta)[0], tuple(theta)))
    if not candidates:
        raise ValueError("no positive E, A, B fits these losses: they do not fall with both N and D")
    fits = [
        _bfgs(lambda t: _objective(t, log_n, log_d, log_loss, delta), np.array(theta))
        for _, theta in sorted(candidates)[:starts]
    ]
    a, b, e, alpha, beta = min(fits, key=lambda fit: fit[1])[0]
    return LossLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta))
