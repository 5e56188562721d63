"""E9. Schoenholz et al. 2017: networks train up to a depth of about 6 xi_c (fragile).

Paper: S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep Information
Propagation", ICLR 2017, arXiv:1611.01232.

Reproduced: figures 5-6, where the boundary of trainability in (weight_var, depth) follows
the white dashed line 6 xi_c. At this scale (papers.md E9) the boundary moves with the
optimizer and learning rate as much as with xi_c, so the check is the bracket that held
in calibration: in the ordered phase, depth 3 xi_c trains and depth 12 xi_c does not.

Setup: scikit-learn digits (1,437 training images, standardized), tanh MLP of width 128,
weight_var 1.0, bias_var 0.05 (xi_c = 3.63 from ``jgrad.theory.mean_field``), softmax
readout, SGD with momentum 0.9 at learning rate 0.01, batch 64, 1,000 steps, 2 seeds;
the training accuracy at the end. Runs only with ``--full``.

Command: ``jgrad repro e9 --full``. CPU time: about 2 minutes.

Expected (papers.md E9's calibration, SGD momentum 0.01, 1,000 steps: depth 30 trains to
0.99 and depth 45 stays at 0.20):

- shallow_accuracy: >= 0.9 [num]
- deep_accuracy: <= 0.3 [num]
- xi_c: 3.63 +- 0.01 [num]
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


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "weight_var": 1.0,
        "bias_var": 0.05,
        "width": 128,
        "lr": 0.01,
        "batch": 64,
        "steps": 300 if quick else 1000,
        "seeds": 1 if quick else 2,
        "depths_in_xi": [3, 12],
    }


def _train_accuracy(depth: int, config: dict, key) -> tuple[float, list]:
    data = jgrad.data.digits(flat=True, split="train")
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    net = jgrad.nn.mlp(
        depth,
        config["width"],
        activation="tanh",
        init="gaussian",
        weight_var=config["weight_var"],
        bias_var=config["bias_var"],
        out_dim=10,
    )
    k_init, k_run = jax.random.split(key)
    _, params = net.init(k_init, (64,))

    def batches(k, step):
        idx = jax.random.randint(k, (config["batch"],), 0, x.shape[0])
        return x[idx], y[idx]

    def loss_fn(p, batch):
        logits = net.apply(p, batch[0])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch[1][:, None], 1))

    with jax.numpy_dtype_promotion("standard"):
        res = optim.train(
            loss_fn,
            params,
            batches,
            optim.chain("momentum", config["lr"]),
            steps=config["steps"],
            key=k_run,
            every=max(config["steps"] // 20, 1),
            progress=False,
        )
    acc = float(jnp.mean(jnp.argmax(net.apply(res.params, x), -1) == y))
    return acc, [r["loss"] for r in res.history]


def run(config: dict, key) -> Result:
    mf = jgrad.theory.mean_field("tanh", config["weight_var"], config["bias_var"])
    xi = float(mf.xi_c)
    numbers = {"xi_c": xi}
    arrays = {}
    for name, mult in zip(("shallow", "deep"), config["depths_in_xi"], strict=True):
        depth = round(mult * xi)
        accs, curves = [], []
        for s in range(config["seeds"]):
            acc, curve = _train_accuracy(depth, config, jax.random.fold_in(key, s))
            accs.append(acc)
            curves.append(curve)
        numbers[f"{name}_accuracy"] = float(np.mean(accs))
        numbers[f"{name}_depth"] = depth
        arrays[f"{name}_loss"] = np.mean(curves, 0)
    arrays["steps"] = np.linspace(
        config["steps"] / 20, config["steps"], len(arrays["shallow_loss"])
    )
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    n = result.numbers
    for name, color in (("shallow", "#0072B2"), ("deep", "#D55E00")):
        ax.plot(
            result.arrays["steps"],
            result.arrays[f"{name}_loss"],
            color=color,
            label=f"depth {n[f'{name}_depth']:.0f} "
            f"({n[f'{name}_depth'] / n['xi_c']:.0f} xi_c): train accuracy "
            f"{n[f'{name}_accuracy']:.2f}",
        )
    ax.axhline(np.log(10), color="0.5", ls="--", lw=1, label="chance (ln 10)")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("training loss")
    ax.set_title(
        f"Schoenholz et al. 2017: trainable depth and xi_c = {n['xi_c']:.2f}\n"
        "tanh MLP, weight_var 1.0, bias_var 0.05, digits, SGD momentum",
        fontsize=10,
    )
    ax.legend(frameon=False)
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
