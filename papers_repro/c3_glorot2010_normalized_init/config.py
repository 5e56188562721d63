"""C3. Glorot & Bengio 2010: standard vs normalized initialization.

Paper: X. Glorot, Y. Bengio, "Understanding the difficulty of training deep feedforward
neural networks", AISTATS 2010, PMLR 9:249-256 (no arXiv id).

Reproduced: section 4.2.1 and figure 7 (back-propagated gradients per layer of a tanh
network, standard initialization ``U[-1/sqrt(n), 1/sqrt(n)]``, eq. (1), against the
normalized one ``U[-sqrt(6/(n_j + n_{j+1})), +sqrt(6/(n_j + n_{j+1}))]``, eq. (16)).
With the standard initialization ``n Var[W] = 1/3``, so in tanh's linear regime the
variance of the back-propagated gradient dL/ds^i shrinks by 1/3 per layer toward the input,
while the variance of the weight gradients stays about the same in every layer; the
normalized initialization keeps the back-propagated variance much closer to constant.

Setup: tanh MLP, 5 hidden layers of 500 units, a linear output layer of 500, batch 256
of unit Gaussian inputs, a Gaussian cotangent at the output (L = sum(y * g)), zero biases,
3 seeds (1 with --quick). Measured with ``jgrad.analyze.layer_grad_norms``: the variance
of dL/ds^i over units and batch at each layer's pre-activation s^i, and of dL/dW^i.
``ratio_i = Var[dL/ds^i] / Var[dL/ds^(i+1)]`` (s^6 the output), seed-averaged.

Command: ``jgrad repro c3`` (``--quick`` for one seed). CPU time: about 5 s.

Expected (tolerances at about three standard errors of the prototype runs;
``../shared/research/papers.md``):

- standard_ratio_3: 0.333333 +- 0.03 [num]
- standard_ratio_4: 0.333333 +- 0.03 [num]
- standard_ratio_5: 0.333333 +- 0.03 [num]
- standard_weight_grad_spread: <= 1.3 [mem]
- normalized_min_ratio: >= 0.4 [num]
- normalized_ratio_5: >= 0.75 [num]

1/3 is ``n Var[W]`` for ``U[-1/sqrt(n), 1/sqrt(n)]`` (exact: ``Var U[-a, a] = a^2/3``) times
tanh'(0)^2 = 1; the lower layers' ratios (about 0.22-0.29) are smaller because their
units are not in the linear regime yet, so only the top three are checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = True
INITS = {"standard": "standard_uniform", "normalized": "glorot_uniform"}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "hidden": 5,
        "width": 500,
        "batch": 256,
        "seeds": 1 if quick else 3,
    }


def _one(init: str, config: dict, key) -> tuple[np.ndarray, np.ndarray]:
    """(Var dL/ds^i, Var dL/dW^i) for i = 1..hidden+1 in one network."""
    n, depth = config["width"], config["hidden"]
    net = jgrad.nn.mlp(depth, n, activation="tanh", init=init, out_dim=n)
    k_net, k_x, k_g = jax.random.split(key, 3)
    _, params = net.init(k_net, (n,))
    x = jax.random.normal(k_x, (config["batch"], n))
    g = jax.random.normal(k_g, (config["batch"], n))
    flow = jgrad.analyze.layer_grad_norms(net, params, x, lambda y: jnp.sum(y * g))
    dense = [k for k in range(len(params)) if "w" in params[k]]  # layer indices
    log_s = np.asarray(flow.log10_norm, np.float64)[[k + 1 for k in dense]]
    var_s = 10 ** (2 * log_s) / (config["batch"] * n)
    log_w = np.array([float(flow.param_log10_norm[k]["w"]) for k in dense])
    var_w = 10 ** (2 * log_w) / (n * n)
    return var_s, var_w


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    for name, init in INITS.items():
        vs, vw = [], []
        for s in range(config["seeds"]):
            var_s, var_w = _one(init, config, jax.random.fold_in(key, s))
            vs.append(var_s)
            vw.append(var_w)
        var_s, var_w = np.mean(vs, 0), np.mean(vw, 0)
        ratios = np.mean([v[:-1] / v[1:] for v in vs], 0)
        arrays[f"{name}_grad_var"] = var_s
        arrays[f"{name}_weight_grad_var"] = var_w
        arrays[f"{name}_ratios"] = ratios
        hidden = var_w[: config["hidden"]]
        if name == "standard":
            for i in (3, 4, 5):
                numbers[f"standard_ratio_{i}"] = float(ratios[i - 1])
            numbers["standard_weight_grad_spread"] = float(hidden.max() / hidden.min())
        else:
            numbers["normalized_min_ratio"] = float(ratios.min())
            numbers["normalized_ratio_5"] = float(ratios[-1])
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for name, color in (("standard", "#D55E00"), ("normalized", "#0072B2")):
        v = result.arrays[f"{name}_grad_var"]
        w = result.arrays[f"{name}_weight_grad_var"]
        layers = np.arange(1, len(v) + 1)
        axes[0].plot(layers, v, "o-", color=color, label=f"{name} init")
        axes[1].plot(layers, w, "o-", color=color, label=f"{name} init")
    layers = np.arange(1, len(result.arrays["standard_grad_var"]) + 1)
    top = result.arrays["standard_grad_var"][-1]
    axes[0].plot(
        layers,
        top * (1 / 3) ** (layers[-1] - layers),
        "k--",
        lw=1,
        label="x 1/3 per layer",
    )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("layer i (6: the linear output)")
    axes[0].set_ylabel("Var[dL/ds^i] (back-propagated gradient)")
    axes[0].legend(frameon=False)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("layer i")
    axes[1].set_ylabel("Var[dL/dW^i] (weight gradient)")
    axes[1].legend(frameon=False)
    fig.suptitle("Glorot & Bengio 2010: tanh, 5 x 500, standard vs normalized init")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
