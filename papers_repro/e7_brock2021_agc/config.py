"""E7. Brock, De, Smith & Simonyan 2021: adaptive gradient clipping (AGC).

Paper: A. Brock, S. De, S. L. Smith, K. Simonyan, "High-Performance Large-Scale Image
Recognition Without Normalization", ICML 2021, arXiv:2102.06171.

Reproduced: section 4's unit-wise clipping rule, eq. (3): for every unit i (the weights
into one output unit, a column of jgrad's ``(in, out)`` matrices), if ``||G_i|| /
max(||W_i||, eps) > lambda`` then ``G_i <- lambda max(||W_i||, eps) / ||G_i|| G_i``, eps =
1e-3; and its claim that AGC lets an unnormalized deep residual network train with a
large learning rate where the unclipped one diverges.

Setup: (a) ``jgrad.optim.chain("sgd", 1.0, agc=lambda)`` (``optax.adaptive_grad_clip``),
lambda = 0.01, float32, on a dense layer ``{"w": (64, 48), "b": (48,)}`` whose columns
have norms spread over 10^-5..10 (some below eps) and gradients whose unit ratios span
10^-4..10^2 lambda; the update is minus the clipped gradient, compared unit by unit
with the rule above computed in float64 with NumPy. (b) scikit-learn digits (train
split, 1,437 images as 64 features; accuracy on the 360 test images), ``jgrad.nn.mlp(16,
128, activation="relu", residual=True, init="he_normal", out_dim=10)`` (16 blocks ``x +
dense(relu(x))``, no normalization: the forward second moment doubles per block), SGD
with learning rate 1.0, batch 128, 500 steps, with and without AGC (lambda = 0.01 on
every parameter, the final layer included), 3 seeds (1 with --quick).

Command: ``jgrad repro e7`` (``--quick`` for one seed). CPU time: about 65 s (quick
27 s) on the shared 2-core machine.

Expected (``../shared/research/papers.md`` E7; (b) calibrated with 4 prototype seeds):

- unit_ratio_excess: <= 1e-06 [src]
- unit_unclipped_changed: <= 0 [src]
- unit_clipped_ratio_err: <= 1e-06 [src]
- unit_rule_rel_err: <= 1e-06 [src]
- unclipped_diverged: >= 1 [num]
- agc_finite: >= 1 [num]
- agc_test_accuracy: >= 0.9 [num]

``unit_ratio_excess`` is the largest ``||G_i|| / max(||W_i||, eps) / lambda - 1`` after
the transform (papers.md: every ratio <= lambda (1 + 1e-6), float32 rounding);
``unit_unclipped_changed`` counts the units below the threshold whose gradient changed
in any bit; ``unit_clipped_ratio_err`` is the largest ``|ratio / lambda - 1|`` of the
clipped units (they land exactly on the threshold); ``unit_rule_rel_err`` the largest
relative difference from the float64 reference. The rule and eps = 1e-3 are read in
timm's re-implementation, which cites the official code. (b): ``unclipped_diverged`` is
1 when every unclipped seed has a NaN or a loss above ln 10 at step 200, ``agc_finite``
1 when every AGC loss is finite, ``agc_test_accuracy`` the mean test accuracy of the AGC
runs; 4 prototype seeds gave 0.951 +- 0.005 (lowest 0.936); the unclipped runs reach
NaN within the first steps at any learning rate from 0.01 up.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrad
from jgrad.experiments import Result

CORE = False
EPS = 1e-3  # optax.adaptive_grad_clip's default, the paper's


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "clipping": 0.01,
        "unit_shape": (64, 48),
        "blocks": 16,
        "width": 128,
        "learning_rate": 1.0,
        "batch": 128,
        "steps": 500,
        "check_step": 200,
        "seeds": 1 if quick else (4 if full else 3),
    }


def _unit_norms(a: np.ndarray) -> np.ndarray:
    """optax's unit-wise norms: per column of a matrix, the whole norm of a vector."""
    a = np.asarray(a, np.float64)
    return np.linalg.norm(a, axis=0) if a.ndim == 2 else np.full(1, np.linalg.norm(a))


def _unit_check(config: dict, key) -> dict:
    lam = config["clipping"]
    n_in, n_out = config["unit_shape"]
    k = jax.random.split(key, 5)
    w_scale = 10 ** jax.random.uniform(k[0], (n_out,), minval=-5, maxval=1)
    w = jax.random.normal(k[1], (n_in, n_out)) / math.sqrt(n_in) * w_scale
    w_norm = np.maximum(_unit_norms(w), EPS)
    g_dir = jax.random.normal(k[2], (n_in, n_out))
    target = lam * 10 ** jax.random.uniform(k[3], (n_out,), minval=-4, maxval=2)
    g = (
        g_dir
        / jnp.linalg.norm(g_dir, axis=0)
        * jnp.asarray(target * w_norm, jnp.float32)
    )
    params = {"w": w, "b": 0.1 * jax.random.normal(k[4], (n_out,))}
    grads = {"w": g, "b": 10.0 * params["b"]}  # the bias vector is one unit, clipped
    tx = jgrad.optim.chain("sgd", 1.0, agc=lam)
    updates, _ = tx.update(grads, tx.init(params), params)
    worst, changed, clip_err, rule_err, clipped = 0.0, 0, 0.0, 0.0, 0
    for name in ("w", "b"):
        p, gr, new = (np.asarray(t[name]) for t in (params, grads, updates))
        new = -new  # sgd with learning rate 1: the update is minus the gradient
        p_norm = np.maximum(_unit_norms(p), EPS)
        before = _unit_norms(gr) / p_norm
        after = _unit_norms(new) / p_norm
        worst = max(worst, float(np.max(after / lam)))
        g64 = np.asarray(gr, np.float64).reshape(gr.shape[0], -1)  # units: columns
        n64 = np.asarray(new, np.float64).reshape(gr.shape[0], -1)
        if gr.ndim == 1:  # a vector is one unit
            g64, n64 = g64.reshape(-1, 1), n64.reshape(-1, 1)
        ref = np.where(before > lam, lam / before, 1.0) * g64
        rule_err = max(rule_err, float(np.max(np.abs(n64 - ref)) / np.max(np.abs(ref))))
        under = before < lam
        same = np.all(new.reshape(g64.shape) == gr.reshape(g64.shape), axis=0)
        changed += int(np.sum(under & ~same))
        over = ~under
        clipped += int(np.sum(over))
        if np.any(over):
            clip_err = max(clip_err, float(np.max(np.abs(after[over] / lam - 1))))
    return {
        "unit_ratio_excess": worst - 1,
        "unit_unclipped_changed": changed,
        "unit_clipped_ratio_err": clip_err,
        "unit_rule_rel_err": rule_err,
        "unit_clipped_count": clipped,
        "unit_count": n_out + 1,
    }


def _train(agc, config: dict, data, key) -> tuple[np.ndarray, float]:
    """(loss per step, test accuracy) of one SGD run."""
    (xtr, ytr), (xte, yte) = data
    net = jgrad.nn.mlp(
        config["blocks"],
        config["width"],
        activation="relu",
        residual=True,
        init="he_normal",
        out_dim=10,
    )
    k_net, k_data = jax.random.split(key)
    _, params = net.init(k_net, (xtr.shape[1],))
    tx = jgrad.optim.chain("sgd", config["learning_rate"], agc=agc)

    def loss(p, x, y):
        logits = net.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, k):
        p, s = carry
        idx = jax.random.choice(k, xtr.shape[0], (config["batch"],), replace=False)
        value, grads = jax.value_and_grad(loss)(p, xtr[idx], ytr[idx])
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), value

    @jax.jit
    def go(p):
        keys = jax.random.split(k_data, config["steps"])
        (p, _), losses = jax.lax.scan(step, (p, tx.init(p)), keys)
        acc = jnp.mean(jnp.argmax(net.apply(p, xte), -1) == yte)
        return losses, acc

    losses, acc = go(params)
    return np.asarray(losses, np.float64), float(acc)


def run(config: dict, key) -> Result:
    k_unit, k_train = jax.random.split(key)
    numbers = _unit_check(config, k_unit)
    arrays = {}
    tr = jgrad.data.digits(flat=True, split="train")
    te = jgrad.data.digits(flat=True, split="test")
    data = (
        (jnp.asarray(tr.x), jnp.asarray(tr.y)),
        (jnp.asarray(te.x), jnp.asarray(te.y)),
    )
    t = config["check_step"]
    diverged, finite, accs = [], [], []
    for s in range(config["seeds"]):
        k = jax.random.fold_in(k_train, s)
        plain, _ = _train(None, config, data, k)
        clipped, acc = _train(config["clipping"], config, data, k)
        bad = not np.all(np.isfinite(plain[:t])) or plain[t - 1] > math.log(10)
        diverged.append(bad)
        finite.append(bool(np.all(np.isfinite(clipped))))
        accs.append(acc)
        arrays[f"plain_loss_seed{s}"] = plain
        arrays[f"agc_loss_seed{s}"] = clipped
    numbers["unclipped_diverged"] = float(all(diverged))
    numbers["agc_finite"] = float(all(finite))
    numbers["agc_test_accuracy"] = float(np.mean(accs))
    numbers["agc_test_accuracy_min"] = float(np.min(accs))
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    fig, ax = plt.subplots(figsize=(6.6, 4.4), constrained_layout=True)
    seeds = sorted(k for k in result.arrays if k.startswith("agc_loss_seed"))
    for i, name in enumerate(seeds):
        s = name.removeprefix("agc_loss_seed")
        for kind, color, label in (
            ("plain", "#D55E00", "SGD, no clipping"),
            ("agc", "#0072B2", "SGD + AGC (lambda = 0.01)"),
        ):
            loss = np.asarray(result.arrays[f"{kind}_loss_seed{s}"], np.float64)
            steps = np.arange(1, len(loss) + 1)
            ok = np.isfinite(loss)
            ax.semilogy(
                steps[ok],
                loss[ok],
                "-",
                lw=0.8,
                color=color,
                alpha=0.8,
                label=label if i == 0 else None,
            )
            if kind == "plain" and not ok.all():
                first = int(np.argmin(ok))
                ax.axvline(
                    first + 1,
                    color=color,
                    ls=":",
                    lw=1,
                    label="first NaN, no clipping" if i == 0 else None,
                )
    ax.axhline(math.log(10), color="k", lw=0.8, ls="--", label="chance, ln 10")
    acc = result.numbers["agc_test_accuracy"]
    ax.set_xscale("log")
    ax.set_ylim(1e-4, None)
    ax.set_xlabel("SGD step (learning rate 1.0, batch 128)")
    ax.set_ylabel("training loss (cross-entropy, minibatch)")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(
        f"Brock et al. 2021: 16-block residual MLP, no norm, digits; AGC test acc {acc:.3f}",
        fontsize=10,
    )
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
