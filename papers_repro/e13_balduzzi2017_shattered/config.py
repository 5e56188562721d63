"""E13. Balduzzi et al. 2017: shattered gradients (fragile; not reproduced as remembered).

Paper: D. Balduzzi, M. Frean, L. Leary, J. P. Lewis, K. W.-D. Ma, B. McWilliams, "The
Shattered Gradients Problem: If resnets are the answer, then what is the question?",
ICML 2017, arXiv:1702.08591.

Reproduced: the claim of the abstract, "the correlation between gradients in standard
feedforward networks decays exponentially with depth resulting in gradients that resemble
white noise", in the form remembered (a 2^-L decay of the correlation of df/dx between
neighbouring inputs of a 1-D input, figures 1-2) [mem], next to the mean-field prediction
of the gradient correlation between two inputs of correlation c0,
``prod_l (1 - arccos(c_l) / pi)`` with ``c_l`` from ReLU's correlation map
(``jgrad.theory.correlation_map``) [num].

Setup: (a) ReLU MLPs with He weights (weight_var 2, no bias), width 512, depths 2 and 5,
inputs of correlation c0 = 0.5 and 0.9, a Gaussian cotangent at the output; the cosine of
the two input gradients, averaged over 16 networks. (b) A 1-D input on 256 points in
[-2, 2], ReLU MLPs of width 200 with He weights and biases of variance 0.01, a scalar
output; the lag-1 autocorrelation of df/dx along the grid at depth 50 (2^-50 if the
remembered decay held). Runs only with ``--full``.

Command: ``jgrad repro e13 --full``. CPU time: about 30 s.

Expected (the mean-field tolerance is three standard errors of a 16-network mean, from
calibration runs on other seeds: per-network standard deviations 0.05-0.10, means within
0.009 of the prediction; the 2^-L bound as remembered):

- meanfield_error_max: <= 0.07 [num]
- feedforward_autocorr_depth50: <= 0.1 [mem]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad import theory
from jgrad.experiments import Result

CORE = False
FULL_ONLY = True


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "width": 512,
        "depths": [2, 5],
        "c0": [0.5, 0.9],
        "seeds": 4 if quick else 16,
        "grid_width": 200,
        "grid_points": 256,
        "grid_depths": [1, 5, 20, 50],
    }


def _grad_cos(depth, c0, width, key) -> float:
    net = jgrad.nn.mlp(depth, width, activation="relu", init="gaussian", weight_var=2.0)
    k_net, k1, k2, k3 = jax.random.split(key, 4)
    _, p = net.init(k_net, (width,))
    a, b = jax.random.normal(k1, (width,)), jax.random.normal(k2, (width,))
    x1, x2 = a, c0 * a + np.sqrt(1 - c0**2) * b
    g = jax.random.normal(k3, (width,))
    grad = jax.grad(lambda x: jnp.dot(net.apply(p, x), g))
    g1, g2 = grad(x1), grad(x2)
    return float(jnp.dot(g1, g2) / (jnp.linalg.norm(g1) * jnp.linalg.norm(g2)))


def _mean_field_cos(depth, c0) -> float:
    c, prod = c0, 1.0
    for _ in range(depth):
        prod *= 1 - np.arccos(np.clip(c, -1.0, 1.0)) / np.pi
        c = float(theory.correlation_map("relu", 2.0, 0.0, 1.0, c))
    return prod


def _autocorr(depth, config, key) -> tuple[float, np.ndarray]:
    net = jgrad.nn.mlp(
        depth,
        config["grid_width"],
        activation="relu",
        init="gaussian",
        weight_var=2.0,
        bias_var=0.01,
        out_dim=1,
    )
    _, p = net.init(key, (1,))
    xs = jnp.linspace(-2.0, 2.0, config["grid_points"])[:, None]
    d = jax.vmap(jax.grad(lambda x: net.apply(p, x)[0]))(xs)[:, 0]
    d = np.asarray(d, np.float64) - np.mean(np.asarray(d, np.float64))
    return float(np.sum(d[1:] * d[:-1]) / np.sum(d * d)), np.asarray(d)


def run(config: dict, key) -> Result:
    measured, predicted = [], []
    for depth in config["depths"]:
        for c0 in config["c0"]:
            keys = [
                jax.random.fold_in(key, 1000 * depth + s)
                for s in range(config["seeds"])
            ]
            measured.append(
                np.mean([_grad_cos(depth, c0, config["width"], k) for k in keys])
            )
            predicted.append(_mean_field_cos(depth, c0))
    measured, predicted = np.array(measured), np.array(predicted)
    autocorr, grads = [], {}
    for depth in config["grid_depths"]:
        r, d = _autocorr(depth, config, jax.random.fold_in(key, 7 + depth))
        autocorr.append(r)
        grads[f"grad_depth{depth}"] = d
    numbers = {
        "meanfield_error_max": float(np.max(np.abs(measured - predicted))),
        "feedforward_autocorr_depth50": float(
            autocorr[config["grid_depths"].index(50)]
        ),
    }
    arrays = {
        "measured_cos": measured,
        "predicted_cos": predicted,
        "autocorr": np.array(autocorr),
        "grid_depths": np.array(config["grid_depths"]),
        **grads,
    }
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    a = result.arrays
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    xs = np.linspace(-2, 2, len(a["grad_depth1"]))
    for depth, color in zip(
        a["grid_depths"], ["#000000", "#E69F00", "#56B4E9", "#D55E00"]
    ):
        d = a[f"grad_depth{int(depth)}"]
        axes[0].plot(
            xs, d / np.max(np.abs(d)), color=color, lw=0.8, label=f"depth {int(depth)}"
        )
    axes[0].set_xlabel("input x")
    axes[0].set_ylabel("df/dx (scaled to max 1)")
    axes[0].set_title(
        "gradients of 1-D ReLU networks (figure 1's quantity)", fontsize=10
    )
    axes[0].legend(frameon=False, fontsize=8)
    depths = a["grid_depths"]
    axes[1].plot(
        depths,
        a["autocorr"],
        "o-",
        color="#D55E00",
        label="measured lag-1 autocorrelation",
    )
    axes[1].plot(depths, 2.0**-depths, "k--", label="2^-L (as remembered)")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("depth L")
    axes[1].set_ylabel("autocorrelation of df/dx, neighbouring inputs")
    axes[1].legend(frameon=False)
    fig.suptitle(
        "Balduzzi et al. 2017: shattered gradients in feedforward ReLU networks"
    )
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
