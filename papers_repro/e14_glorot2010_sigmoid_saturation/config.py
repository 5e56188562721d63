"""E14. Glorot & Bengio 2010: the top sigmoid layer saturates early in training (fragile).

Paper: X. Glorot, Y. Bengio, "Understanding the difficulty of training deep feedforward
neural networks", AISTATS 2010, PMLR 9:249-256 (no arXiv id).

Reproduced: section 3.1 and figure 2: in a 4-hidden-layer sigmoid network with the
standard initialization ``U[-1/sqrt(n), 1/sqrt(n)]``, the mean activation of the top
hidden layer is driven quickly toward 0 (saturation) while the lower layers stay near
0.5, and the network leaves that regime only slowly; tanh units, symmetric around 0, do
not saturate that way.

Setup: scikit-learn digits (1,437 training images), 4 hidden layers of 256 units, softmax
readout, SGD at learning rate 0.1 with mini-batches of 10 (as the paper), 2,000 steps
(14 epochs); the mean activation of each hidden layer on 300 fixed training images every
50 steps, recorded during training by ``jgrad.optim.train``'s ``record_fn``. Sigmoid with
standard and with normalized initialization, and tanh with standard initialization.
Runs only with ``--full``.

Command: ``jgrad repro e14 --full``. CPU time: about 2 minutes.

Expected (papers.md E14, uncalibrated: the paper's figure 2 shows the top layer near 0
within the first epochs):

- sigmoid_top_mean_at_200: <= 0.1 [mem]
- sigmoid_first_mean: 0.5 +- 0.1 [mem]
- tanh_top_mean_abs: <= 0.1 [mem]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad import optim
from jgrad.experiments import Result

CORE = False
FULL_ONLY = True
RUNS = {
    "sigmoid": ("sigmoid", "standard_uniform"),
    "sigmoid_normalized": ("sigmoid", "glorot_uniform"),
    "tanh": ("tanh", "standard_uniform"),
}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "hidden": 4,
        "width": 256,
        "lr": 0.1,
        "batch": 10,
        "steps": 300 if quick else 2000,
        "every": 50,
        "probe": 300,
    }


def _means(act, init, config, key) -> np.ndarray:
    """(recordings, hidden) mean activation of each hidden layer during training."""
    data = jgrad.data.digits(flat=True, split="train")
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    probe = x[: config["probe"]]
    net = jgrad.nn.mlp(
        config["hidden"], config["width"], activation=act, init=init, out_dim=10
    )
    k_init, k_run = jax.random.split(key)
    _, params = net.init(k_init, (64,))

    def batches(k, step):
        idx = jax.random.randint(k, (config["batch"],), 0, x.shape[0])
        return x[idx], y[idx]

    def loss_fn(p, batch):
        logp = jax.nn.log_softmax(net.apply(p, batch[0]))
        return -jnp.mean(jnp.take_along_axis(logp, batch[1][:, None], 1))

    def record(p, batch):
        _, hs = net.apply(p, probe, return_intermediates=True)
        acts = hs[1 : 2 * config["hidden"] : 2]  # the activations' outputs
        return {"layer_means": jnp.stack([jnp.mean(h) for h in acts])}

    with jax.numpy_dtype_promotion("standard"):
        _, hs0 = net.apply(params, probe, return_intermediates=True)
        first = [float(jnp.mean(h)) for h in hs0[1 : 2 * config["hidden"] : 2]]
        res = optim.train(
            loss_fn,
            params,
            batches,
            optim.chain("sgd", config["lr"]),
            steps=config["steps"],
            key=k_run,
            every=config["every"],
            record_fn=record,
            record_every=config["every"],
            progress=False,
        )
    return np.array([first] + [r["layer_means"] for r in res.history])


def run(config: dict, key) -> Result:
    arrays = {
        name: _means(act, init, config, jax.random.fold_in(key, i))
        for i, (name, (act, init)) in enumerate(RUNS.items())
    }
    at_200 = 200 // config["every"]
    s = arrays["sigmoid"]
    numbers = {
        "sigmoid_top_mean_at_200": float(s[at_200, -1]),
        "sigmoid_top_mean_end": float(s[-1, -1]),
        "sigmoid_first_mean": float(np.mean(s[:, 0])),
        "sigmoid_normalized_top_mean_at_200": float(
            arrays["sigmoid_normalized"][at_200, -1]
        ),
        "tanh_top_mean_abs": float(np.max(np.abs(arrays["tanh"][:, -1]))),
    }
    arrays["steps"] = np.arange(len(s)) * config["every"]
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    titles = {
        "sigmoid": "sigmoid, standard init",
        "sigmoid_normalized": "sigmoid, normalized init",
        "tanh": "tanh, standard init",
    }
    fig, axes = plt.subplots(
        1, 3, figsize=(13, 3.8), constrained_layout=True, sharey=True
    )
    steps = result.arrays["steps"]
    colors = ["#000000", "#E69F00", "#56B4E9", "#D55E00"]
    for ax, (name, title) in zip(axes, titles.items(), strict=True):
        m = result.arrays[name]
        for layer in range(m.shape[1]):
            ax.plot(steps, m[:, layer], color=colors[layer], label=f"layer {layer + 1}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("SGD step (mini-batch 10)")
    axes[0].set_ylabel("mean activation of the hidden layer")
    axes[0].legend(frameon=False)
    fig.suptitle(
        "Glorot & Bengio 2010, figure 2: activation values during learning (digits)"
    )
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
