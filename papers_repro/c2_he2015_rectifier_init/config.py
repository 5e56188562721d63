"""C2. He et al. 2015: the variance recursion of rectifier networks; 30-layer Xavier stall.

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Delving Deep into Rectifiers: Surpassing
Human-Level Performance on ImageNet Classification", ICCV 2015, arXiv:1502.01852.

Reproduced: section 2.2, eqs. (9)-(10) and (14): in a ReLU network
``Var[y_L] = Var[y_1] prod_{l=2..L} (1/2 n_l Var[w_l])``, the same factor per layer for
the back-propagated gradient, so He's ``1/2 n_l Var[w_l] = 1`` (std sqrt(2/n_l)) keeps
both at every depth while the Xavier scale ``n_l Var[w_l] = 1`` halves them per layer
(log slope ln 1/2 = -0.693147; ``jgrad.theory.mean_field("relu", w, 0).chi1`` = w / 2);
and figures 2 and 3: a 22-layer net trains from either initialization, a 30-layer net
with Xavier's stalls (its output has std ~2^-15 of the input's) while He's trains.

Setup: (1) statistics: ReLU MLP of depth 40, width 512, no biases, a batch of 32 unit
Gaussian inputs, a unit Gaussian cotangent at the output, sigma_w^2 = 2 (He) and 1
(Xavier) on the same unit weights, 3 seeds (1 with --quick), float64. Measured with
``jgrad.analyze.layer_grad_norms``: the forward log slope of ``||h^l||^2`` and the
backward per-layer log growth of ``||dL/dh^l||^2`` (toward the input), least squares over
l = 1..40, seed-averaged. (2) training: scikit-learn's digits (``jgrad.data.digits``,
standardized, the 1,437-image train split), ReLU MLP of width 128 with depth 22 and 30
hidden layers and a linear readout, weights ``N(0, sigma_w^2 / fan_in)`` everywhere,
zero biases, softmax cross-entropy, SGD with momentum 0.9 (``jgrad.optim.chain``), lr
0.01, batch 64, 600 steps (``jgrad.optim.train``), 2 seeds (1 with --quick); the
full-batch training loss and accuracy at the end, He and Xavier from the same unit
weights and batches.

Command: ``jgrad repro c2`` (``--quick``: one seed). CPU time: about 55 s (``--quick``
about 40 s) on 2 busy cores.

Expected (``../shared/research/papers.md``, C2; slopes at about three standard errors
of the prototype, training bounds from its runs):

- xavier_forward_log_growth: -0.693147 +- 0.03 [num]
- xavier_backward_log_growth: -0.693147 +- 0.03 [num]
- he_forward_log_growth: 0 +- 0.02 [num]
- he_backward_log_growth: 0 +- 0.02 [num]
- xavier30_min_loss: >= 2.25 [mem]
- xavier30_max_accuracy: <= 0.15 [mem]
- he30_max_loss: <= 2 [mem]
- he30_min_accuracy: >= 0.3 [mem]
- xavier22_min_accuracy: >= 0.3 [mem]

min/max are over seeds: every Xavier seed at depth 30 ends near ln 10 = 2.302585 (chance)
with chance accuracy, every He seed has learned. Both training checks are fragile at
this scale (README.md): the stall is a plateau that a depth-22 Xavier net leaves after
about 300 steps and a depth-30 one in some seeds near step 600, so the budget is part of
the check; and lr 0.01 puts the depth-30 He net near the edge of stability (its loss
spikes; one of four exploratory seeds collapsed to chance near step 550).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrad
from jgrad.experiments import Result

CORE = True
INITS = {"he": 2.0, "xavier": 1.0}  # sigma_w^2: 1/2 n Var[w] = 1, n Var[w] = 1
COLORS = {"he": "#D55E00", "xavier": "#0072B2"}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "inits": INITS,
        "stats": {"depth": 40, "width": 512, "batch": 32, "seeds": 1 if quick else 3},
        "train": {
            "depths": [22, 30],
            "width": 128,
            "batch": 64,
            "steps": 600,
            "learning_rate": 0.01,
            "momentum": 0.9,
            "seeds": 1 if quick else 4 if full else 2,
            "every": 25,
        },
    }


def _statistics(config: dict, key) -> tuple[dict, dict]:
    """Forward and backward per-layer log slopes of a deep ReLU network at He's and
    Xavier's scale (the same unit weights scaled)."""
    c = config["stats"]
    n, depth, batch = c["width"], c["depth"], c["batch"]
    net = jgrad.nn.mlp(depth, n, activation="relu", weight_var=1.0, stacked=True)
    weight_vars = jnp.asarray(list(config["inits"].values()), jnp.float64)

    @jax.jit
    def logs(key):
        k_net, k_x, k_g = jax.random.split(key, 3)
        _, unit = net.init(k_net, (n,))
        x = jax.random.normal(k_x, (batch, n), jnp.float64)
        g = jax.random.normal(k_g, (batch, n), jnp.float64)

        def at(weight_var):
            params = jax.tree.map(lambda a: jnp.sqrt(weight_var) * a, unit)
            params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
            flow = jgrad.analyze.layer_grad_norms(
                net, params, x, lambda y: jnp.sum(y * g)
            )
            # entries: 0 the input, 1 dense, 2 h^1, 3.. the repeated blocks' h^2..h^L
            ln10 = jnp.log(10.0)
            return 2 * ln10 * flow.log10_act_norm[2:], 2 * ln10 * flow.log10_norm[2:]

        return jax.lax.map(at, weight_vars)

    layers = np.arange(1, depth + 1)
    fwd, bwd = zip(*[logs(jax.random.fold_in(key, s)) for s in range(c["seeds"])])
    fwd, bwd = np.asarray(fwd), np.asarray(bwd)  # (seeds, inits, L)
    numbers, arrays = {}, {}
    for i, name in enumerate(config["inits"]):
        up = np.polyfit(layers, fwd[:, i].T, 1)[0]  # growth of ||h^l||^2 going up
        down = -np.polyfit(layers, bwd[:, i].T, 1)[0]  # growth toward the input
        numbers[f"{name}_forward_log_growth"] = float(up.mean())
        numbers[f"{name}_backward_log_growth"] = float(down.mean())
        chi1 = jgrad.theory.mean_field("relu", float(weight_vars[i]), 0.0).chi1
        numbers[f"{name}_ln_chi1"] = float(np.log(chi1))
        arrays[f"{name}_forward_log_sq"] = fwd[:, i].mean(0)
        arrays[f"{name}_backward_log_sq"] = bwd[:, i].mean(0)
    arrays["stats_layers"] = layers
    return numbers, arrays


def _train_one(depth, weight_var, config, data, full_set, key) -> dict:
    """Trains one network; returns its full-batch loss and accuracy curve."""
    c = config["train"]
    net = jgrad.nn.mlp(
        depth,
        c["width"],
        activation="relu",
        weight_var=weight_var,
        out_dim=10,
        stacked=True,
    )
    k_init, k_run = jax.random.split(key)
    _, params = net.init(k_init, (full_set[0].shape[1],))

    def loss_fn(params, batch):
        x, y = batch
        logits = net.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def evaluate(params):
        x, y = full_set
        logits = net.apply(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return {"full_loss": loss, "full_accuracy": jnp.mean(logits.argmax(-1) == y)}

    start = evaluate(params)
    output_std = jnp.std(net.apply(params, full_set[0]))
    tx = jgrad.optim.chain("momentum", c["learning_rate"], momentum=c["momentum"])
    result = jgrad.optim.train(
        loss_fn,
        params,
        data,
        tx,
        steps=c["steps"],
        key=k_run,
        every=c["every"],
        progress=False,
        record_fn=lambda p, _: evaluate(p),
        record_every=c["every"],
    )
    rows = [r for r in result.history if "full_loss" in r]
    return {
        "steps": np.array([0] + [r["step"] for r in rows]),
        "loss": np.array([float(start["full_loss"])] + [r["full_loss"] for r in rows]),
        "accuracy": rows[-1]["full_accuracy"],
        "output_std": float(output_std),
        "diverged": result.divergence is not None,
    }


def _training(config: dict, key) -> tuple[dict, dict]:
    c = config["train"]
    d = jgrad.data.digits(flat=True, split="train")
    x, y = jnp.asarray(d.x), jnp.asarray(d.y)

    @jax.jit
    def data(key, step):
        rows = jax.random.randint(key, (c["batch"],), 0, x.shape[0])
        return x[rows], y[rows]

    numbers, arrays = {}, {}
    for depth in c["depths"]:
        for name, weight_var in config["inits"].items():
            runs = [
                _train_one(
                    depth,
                    weight_var,
                    config,
                    data,
                    (x, y),
                    jax.random.fold_in(jax.random.fold_in(key, depth), s),
                )
                for s in range(c["seeds"])
            ]
            tag = f"{name}{depth}"
            losses = [r["loss"][-1] for r in runs]
            accs = [r["accuracy"] for r in runs]
            numbers[f"{tag}_min_loss"] = float(np.min(losses))
            numbers[f"{tag}_max_loss"] = float(np.max(losses))
            numbers[f"{tag}_min_accuracy"] = float(np.min(accs))
            numbers[f"{tag}_max_accuracy"] = float(np.max(accs))
            numbers[f"{tag}_output_std_init"] = float(
                np.mean([r["output_std"] for r in runs])
            )
            numbers[f"{tag}_diverged"] = float(sum(r["diverged"] for r in runs))
            arrays[f"{tag}_loss"] = np.array([r["loss"] for r in runs])
            arrays["train_steps"] = runs[0]["steps"]
    # Var of the readout at init for Xavier: mean(x^2) (sigma_w^2 / 2)^depth, sigma_w^2 = 1
    mean_sq = float(jnp.mean(x**2))
    for depth in c["depths"]:
        numbers[f"xavier{depth}_output_std_theory"] = float(
            np.sqrt(mean_sq * 2.0**-depth)
        )
    return numbers, arrays


def run(config: dict, key) -> Result:
    k_stats, k_train = jax.random.split(key)
    with jax.enable_x64():
        numbers, arrays = _statistics(config, k_stats)
    more_numbers, more_arrays = _training(config, k_train)
    return Result({**numbers, **more_numbers}, {**arrays, **more_arrays})


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    a, nums = result.arrays, result.numbers
    depths = sorted(
        {
            int(k.split("_")[0][2:])
            for k in a
            if k.startswith("he") and k.endswith("_loss")
        }
    )
    fig, axes = plt.subplots(1, 1 + len(depths), figsize=(14, 4.2))
    ax = axes[0]
    layers = np.asarray(a["stats_layers"])
    for name, color in COLORS.items():
        fwd = np.asarray(a[f"{name}_forward_log_sq"])
        ax.semilogy(
            layers,
            np.exp(fwd - fwd[0]),
            "o",
            ms=3,
            color=color,
            label=f"{name}: measured {nums[f'{name}_forward_log_growth']:+.3f}/layer",
        )
        ax.semilogy(
            layers,
            np.exp(nums[f"{name}_ln_chi1"] * (layers - 1)),
            "-",
            lw=1,
            color=color,
            label=r"theory $(\sigma_w^2/2)^{l-1}$",
        )
    back = "\n".join(
        f"{name}: {nums[f'{name}_backward_log_growth']:+.3f}/layer" for name in COLORS
    )
    ax.text(
        0.97,
        0.6,
        f"backward, ln of ||dL/dh^l||^2\ngrowth toward the input:\n{back}",
        transform=ax.transAxes,
        ha="right",
        va="center",
        fontsize=8,
    )
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\|h^l\|^2 / \|h^1\|^2$ (forward signal)")
    ax.set_title("ReLU, width 512: variance per layer")
    ax.legend(frameon=False, fontsize=8)
    steps = np.asarray(a["train_steps"])
    for ax, depth in zip(axes[1:], depths, strict=True):
        for name, color in COLORS.items():
            for s, loss in enumerate(np.asarray(a[f"{name}{depth}_loss"])):
                ax.semilogy(
                    steps,
                    loss,
                    "-" if name == "he" else "--",
                    color=color,
                    alpha=1 if s == 0 else 0.55,
                    label=f"{name} init" if s == 0 else None,
                )
        ax.axhline(np.log(10), color="gray", lw=0.8, ls=":", label="ln 10 (chance)")
        ax.set_xlabel("SGD step (batch 64)")
        ax.set_ylabel("training loss (full train set)")
        ax.set_title(f"{depth}-layer ReLU net on digits")
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(
        "He et al. 2015: Xavier halves the ReLU signal per layer; "
        "30 layers stall, He's init trains"
    )
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
