"""E8. Zhang, He, Sra & Jadbabaie 2020: why gradient clipping accelerates training.

Paper: J. Zhang, T. He, S. Sra, A. Jadbabaie, "Why gradient clipping accelerates
training: A theoretical justification for adaptivity", ICLR 2020, arXiv:1905.11881.

Reproduced: the central claim of the abstract and section 3 (Theorems 3 and 4): under
``(L0, L1)``-smoothness, ``||grad^2 f(x)|| <= L0 + L1 ||grad f(x)||``, clipped gradient
descent ``x <- x - eta min(1, gamma / ||grad f||) grad f`` converges arbitrarily faster
than gradient descent with any fixed step, whose step must shrink with the largest
curvature on its path. On the toy ``f(x) = x^4 / 4`` (``(L0, L1)``-smooth with ``L0 = L1 =
3``, not L-smooth), started at x0: fixed-step GD needs a step below ``2 / x0^2`` and so a
number of steps growing as ``x0^2``, clipped GD as ``x0``.

Setup: float64, deterministic. Steps until ``|f'(x)| < 1e-3`` (``|x| < 0.1``) from x0 in
{10, 100}: GD with ``eta = 1 / (3 x0^2)`` (the 1/L step for the curvature ``3 x0^2`` at
x0) against clipped GD with ``eta = 0.1``, ``gamma = 1``; each a ``lax.while_loop``.
Predicted counts (the gradient flow of the update, derived here): GD ``(1/x_e^2 -
1/x0^2) / (2 eta)`` = 1.5 x0^2 / x_e^2 with x_e = 0.1; clipped ``(x0 - 1) / (eta gamma) +
(1/x_e^2 - 1) / (2 eta)`` (unit steps of 0.1 down to |f'| = 1, then GD with eta = 0.1).

Command: ``jgrad repro e8`` (the same with ``--quick``). CPU time: about 5 s.

Expected (``../shared/research/papers.md`` E8(a); deterministic):

- speedup_x0_10: >= 1 [num]
- speedup_x0_100: >= 1 [num]
- speedup_growth: >= 10 [num]
- gd_steps_x0_100_over_prediction: 1 +- 2% [num]
- clipped_steps_x0_100_over_prediction: 1 +- 2% [num]

``speedup_x0`` is GD's step count over clipped GD's; ``speedup_growth`` is
``speedup_x0_100 / speedup_x0_10`` (papers.md: at least 10; the predicted counts give
1.5e6 / 1485 over 1.5e4 / 585, about 39). The counts against their predictions check
that each method runs as analysed (2%: the discrete steps against the flow). The
paper's second observation (smoothness correlates with the gradient norm along real
training runs, its figure 1) is not reproduced here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jgrad.experiments import Result

CORE = False
X0 = (10.0, 100.0)


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "x0": X0,
        "grad_tol": 1e-3,
        "clip_lr": 0.1,
        "clip_gamma": 1.0,
        "max_steps": 10_000_000,
        "trace_points": 400,
    }


def _grad(x):
    return x**3  # f(x) = x^4 / 4


def _steps(x0: float, lr: float, gamma: float | None, config: dict) -> int:
    """Steps of (clipped, for a ``gamma``) gradient descent until ``|f'(x)| <
    grad_tol``; -1 if ``max_steps`` pass first."""
    tol, cap = config["grad_tol"], config["max_steps"]

    def cond(state):
        x, k = state
        return (jnp.abs(_grad(x)) >= tol) & (k < cap)

    def body(state):
        x, k = state
        g = _grad(x)
        if gamma is not None:
            g = g * jnp.minimum(1.0, gamma / jnp.abs(g))
        return x - lr * g, k + 1

    run = jax.jit(lambda x: jax.lax.while_loop(cond, body, (x, jnp.int64(0))))
    x, k = run(jnp.float64(x0))
    return int(k) if k < cap else -1


def _trace(x0: float, lr: float, gamma: float | None, steps: int, n: int) -> np.ndarray:
    """|f'(x_k)| at ``n`` log-spaced step indices k in [0, steps]."""
    idx = np.unique(np.geomspace(1, steps + 1, n).astype(np.int64) - 1)

    def step(x, _):
        g = _grad(x)
        if gamma is not None:
            g = g * jnp.minimum(1.0, gamma / jnp.abs(g))
        x = x - lr * g
        return x, jnp.abs(_grad(x))

    _, gs = jax.lax.scan(step, jnp.float64(x0), None, length=steps)
    gs = np.concatenate([[abs(x0) ** 3], np.asarray(gs)])
    return np.stack([idx, gs[idx]])


def run(config: dict, key) -> Result:
    del key  # deterministic
    numbers, arrays = {}, {}
    x_e = config["grad_tol"] ** (1 / 3)
    eta, gamma = config["clip_lr"], config["clip_gamma"]
    with jax.enable_x64():
        for x0 in config["x0"]:
            tag = f"x0_{int(x0)}"
            gd_lr = 1 / (3 * x0**2)
            gd = _steps(x0, gd_lr, None, config)
            cl = _steps(x0, eta, gamma, config)
            numbers[f"gd_steps_{tag}"] = gd
            numbers[f"clipped_steps_{tag}"] = cl
            numbers[f"speedup_{tag}"] = gd / cl
            gd_pred = (1 / x_e**2 - 1 / x0**2) / (2 * gd_lr)
            cl_pred = (x0 - gamma ** (1 / 3)) / (eta * gamma) + (
                1 / x_e**2 - gamma ** (-2 / 3)
            ) / (2 * eta)
            numbers[f"gd_steps_{tag}_over_prediction"] = gd / gd_pred
            numbers[f"clipped_steps_{tag}_over_prediction"] = cl / cl_pred
            n = config["trace_points"]
            arrays[f"gd_{tag}"] = _trace(x0, gd_lr, None, gd, n)
            arrays[f"clipped_{tag}"] = _trace(x0, eta, gamma, cl, n)
    numbers["speedup_growth"] = numbers["speedup_x0_100"] / numbers["speedup_x0_10"]
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    fig, ax = plt.subplots(figsize=(6.6, 4.4), constrained_layout=True)
    styles = {"x0_10": ("#56B4E9", "#E69F00"), "x0_100": ("#0072B2", "#D55E00")}
    for tag, (c_clip, c_gd) in styles.items():
        x0 = tag.split("_")[1]
        for name, color, ls in (("clipped", c_clip, "-"), ("gd", c_gd, "--")):
            k, g = np.asarray(result.arrays[f"{name}_{tag}"])
            steps = int(result.numbers[f"{name}_steps_{tag}"])
            label = "clipped GD" if name == "clipped" else "fixed-step GD"
            ax.loglog(
                k + 1, g, ls, color=color, label=f"{label}, x0 = {x0}: {steps} steps"
            )
    ax.axhline(1e-3, color="k", lw=0.8, ls=":", label="|f'(x)| = 1e-3")
    ax.set_xlabel("step k + 1")
    ax.set_ylabel("|f'(x_k)|")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Zhang et al. 2020: f(x) = x^4/4, clipped vs fixed-step GD")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
