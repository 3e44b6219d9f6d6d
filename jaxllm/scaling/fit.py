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


# Hoffmann et al. 2022, appendix D.2: L-BFGS from every point of this grid of (alpha, beta, e, a, b)
HOFFMANN_GRID = (
    np.arange(0, 2.01, 0.5),  # alpha
    np.arange(0, 2.01, 0.5),  # beta
    np.arange(-1, 1.01, 0.5),  # e = ln E
    np.arange(0, 25.01, 5),  # a = ln A
    np.arange(0, 25.01, 5),  # b = ln B
)


def _grid_values(log_n, log_d, log_loss, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The objective at every point of HOFFMANN_GRID, vectorised: (points as rows of theta, values)."""
    alpha, beta, e, a, b = (g.ravel() for g in np.meshgrid(*HOFFMANN_GRID, indexing="ij"))
    theta = np.stack([a, b, e, alpha, beta], axis=1)
    terms = np.stack(
        [a[:, None] - alpha[:, None] * log_n, b[:, None] - beta[:, None] * log_d, np.repeat(e[:, None], len(log_n), 1)]
    )
    lse = np.logaddexp(np.logaddexp(terms[0], terms[1]), terms[2])
    return theta, _huber(lse - log_loss, delta)[0].sum(axis=1)


def fit_loss_law(
    n_params, n_tokens, loss, delta: float = 1e-3, starts: int = 8, init=None, iters: int = 2000
) -> LossLaw:
    """Fits L(N, D) = E + A/N^alpha + B/D^beta by Huber loss (delta 1e-3) on log losses, Hoffmann et al. 2022's
    Approach 3 as they ran it: from the grid of starts of their appendix D.2 (the `starts` best of its 4,500
    points by the objective, since a local search from the others ends in the same basins), each refined by a
    quasi-Newton search; the best wins. (They use L-BFGS; with five parameters full BFGS is as cheap and steadier.)
    init: extra starting LossLaws (the bootstrap starts from the full fit)."""
    log_n, log_d, log_loss = (np.log(np.asarray(v, dtype=np.float64)) for v in (n_params, n_tokens, loss))
    grid, values = _grid_values(log_n, log_d, log_loss, delta)
    points = [grid[i] for i in np.argsort(values)[:starts]]
    points += [np.array([np.log(w.A), np.log(w.B), np.log(w.E), w.alpha, w.beta]) for w in (init or [])]
    fits = [_bfgs(lambda t: _objective(t, log_n, log_d, log_loss, delta), p.copy(), iters) for p in points]
    a, b, e, alpha, beta = min(fits, key=lambda fit: fit[1])[0]
    if not (alpha > 0 and beta > 0):
        raise ValueError(
            f"the fit's exponents (alpha {alpha:.3g}, beta {beta:.3g}) are not both positive: the losses "
            "do not fall with both N and D"
        )
    return LossLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta))


def law_exponents(law: LossLaw) -> dict:
    """The law's parameters with the compute-optimal exponents it implies: N_opt ∝ C^a, D_opt ∝ C^b."""
    return {
        "E": law.E,
        "A": law.A,
        "B": law.B,
        "alpha": law.alpha,
        "beta": law.beta,
        "params_exponent": law.beta / (law.alpha + law.beta),
        "tokens_exponent": law.alpha / (law.alpha + law.beta),
    }


def bootstrap_loss_law(n_params, n_tokens, loss, law: LossLaw, resamples: int = 200, seed: int = 0) -> dict:
    """95% intervals (2.5th and 97.5th percentiles) of the law's parameters and exponents over fits to runs drawn
    with replacement, each started from the full fit and the best grid points."""
    n_params, n_tokens, loss = (np.asarray(v, dtype=np.float64) for v in (n_params, n_tokens, loss))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(loss), len(loss))
        try:
            fit = fit_loss_law(n_params[pick], n_tokens[pick], loss[pick], starts=2, init=[law], iters=200)
            draws.append(law_exponents(fit))
        except ValueError:
            continue  # a resample without both trends: it has no law to count
    return _intervals(draws, resamples)


def bootstrap_isoflop(
    profiles: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]], resamples: int = 200, seed: int = 0
) -> dict:
    """95% intervals of Approach 2's exponents (N_opt ∝ C^a, D_opt ∝ C^b) by a residual bootstrap: each budget's
    (budget, N, D, loss) profile keeps its sizes, and the residuals of its parabola are drawn with replacement
    onto the fitted losses (resampling the runs themselves leaves most draws of 5 sizes with fewer than 3)."""
    rng = np.random.default_rng(seed)
    fitted = []
    for budget, n, d, loss in profiles:
        for x in (np.log(n), np.log(d)):
            coeffs = np.polyfit(x, loss, 2)
            fitted.append((budget, x, np.polyval(coeffs, x), loss - np.polyval(coeffs, x)))
    draws = []
    for _ in range(resamples):
        minima = []
        try:
            for budget, x, smooth, residual in fitted:
                minima.append((budget, isoflop_minimum(x, smooth + rng.choice(residual, len(residual)))[0]))
        except ValueError:
            continue  # a draw whose profile does not curve upwards has no minimum to count
        c = np.array([m[0] for m in minima[::2]])
        n_opt, d_opt = np.exp([m[1] for m in minima[::2]]), np.exp([m[1] for m in minima[1::2]])
        draws.append({"params_exponent": power_law(c, n_opt)[0], "tokens_exponent": power_law(c, d_opt)[0]})
    return _intervals(draws, resamples)


def _intervals(draws: list[dict], resamples: int) -> dict:
    if len(draws) < resamples / 2:
        return {"error": f"only {len(draws)} of {resamples} resamples could be fitted"}
    return {
        key: [float(np.percentile([d[key] for d in draws], 2.5)), float(np.percentile([d[key] for d in draws], 97.5))]
        for key in draws[0]
    } | {"resamples": len(draws)}
