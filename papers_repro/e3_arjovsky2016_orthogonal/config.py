"""E3. Arjovsky, Shah & Bengio 2016: orthogonal recurrences with ReLU never explode.

Paper: M. Arjovsky, A. Shah, Y. Bengio, "Unitary Evolution Recurrent Neural Networks",
ICML 2016, arXiv:1511.06464.

Reproduced: section 2's bound and the baselines of sections 4.1 and 4.2. For
``h_t = phi(W h_{t-1} + V x_t)`` with W orthogonal,
``||dC/dh_t|| <= ||dC/dh_T|| prod_k ||D_{k+1}||`` with D_k the diagonal of phi'; for ReLU
(entries 0 or 1) ``||dC/dh_t|| <= ||dC/dh_T||``: the gradient cannot explode, and each
backward step ``dC/dh_{t-1} = W D_t dC/dh_t`` does not lengthen it. With the identity
activation every step preserves the norm exactly. The copying memory task's memoryless
baseline is ``10 log(8) / (T + 20)`` (cross entropy per step) and the adding problem's is
0.167, the variance of a sum of two independent U[0, 1] (exactly 1/6).

Setup: ``jgrad.rnn.vanilla(128, "relu")`` with a Haar-orthogonal recurrent weight
(``jgrad.init.orthogonal``, float64), zero bias, 10 Gaussian inputs per step, T = 200;
C = g . h_T with a Gaussian cotangent g, 20 sequences (8 with --quick), each with its own
weights, inputs and g. ``jgrad.analyze.rnn_grad_norms`` gives ||dC/dh_t|| for t = 0..T
(float64, log space); the checks read the largest backward step ratio
``||dC/dh_{t-1}|| / ||dC/dh_t||`` over all t and sequences. The same with the identity
activation (the largest deviation of a step ratio from 1), and, for the figure only,
a ReLU RNN with Gaussian ``N(0, 2/N)`` recurrent weights, whose steps do lengthen the
gradient. Baselines: the copy task (``jgrad.data.copy_task``, T = 100, 1,000 sequences)
scored by the memoryless predictor (blank with probability 1 for T + 10 steps, then
uniform over the 8 symbols), and the adding problem (``jgrad.data.adding``, T = 50,
10^5 sequences) scored by always predicting 1; each next to the generator's
``chance_loss``.

Command: ``jgrad repro e3`` (``--quick`` for 8 sequences). CPU time: about 19 s (quick
17 s), wall, on the shared 2-core CPU at a load of about 6.

Expected (``../shared/research/papers.md``; the paper's LaTeX in the official repository):

- relu_max_step_ratio: <= 1 [src]
- identity_max_ratio_dev: <= 1e-10 [src]
- copy_baseline: 0.173287 +- 1e-12 [src]
- copy_chance_loss: 0.173287 +- 1e-12 [src]
- adding_baseline: 0.166667 +- 0.003 [src]
- adding_chance_loss: 0.166667 +- 1e-12 [src]

The bound is an inequality, so the ReLU check is ``<= 1`` with no tolerance (measured
ratios stay well below 1: about half the units are off at every step). The identity's
1e-10 allows float64 rounding over 200 steps. 0.173287 = 10 ln 8 / 120 (T = 100); the
adding baseline's tolerance is about 5 standard errors of a mean over 10^5 sequences
(standard deviation of (y - 1)^2: 0.197).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = False
CASES = {
    "relu": ("relu", "orthogonal"),
    "identity": ("identity", "orthogonal"),
    "relu_gaussian": ("relu", "gaussian"),
}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "hidden": 128,
        "in_dim": 10,
        "steps": 200,
        "sequences": 8 if quick else 20,
        "copy_len": 100,
        "copy_n": 1000,
        "adding_len": 50,
        "adding_n": 100_000,
    }


def _norms(case: str, config: dict, keys) -> np.ndarray:
    """(sequences, T + 1) ln ||dC/dh_t||, t = 0..T, float64."""
    act, w_init = CASES[case]
    n, d, steps = config["hidden"], config["in_dim"], config["steps"]
    cell = jgrad.rnn.vanilla(n, act, weight_var=2.0 if w_init == "gaussian" else 1.0)
    if w_init == "orthogonal":
        w_hh = jgrad.init.orthogonal(1.0)
    else:
        w_hh = jgrad.init.gaussian(2.0)

    def one(key):
        k_p, k_w, k_x, k_g = jax.random.split(key, 4)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(k_p, d))
        params["w_hh"] = w_hh(k_w, (n, n), jnp.float64)
        params["b"] = jnp.zeros(n, jnp.float64)
        xs = jax.random.normal(k_x, (steps, d), jnp.float64)
        g = jax.random.normal(k_g, (n,), jnp.float64)
        flow = jgrad.analyze.rnn_grad_norms(
            cell, params, xs, jnp.zeros(n, jnp.float64), lambda ys: jnp.sum(ys[-1] * g)
        )
        return flow.log10_norm * jnp.log(10.0)

    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def _copy_baseline(config: dict, key) -> tuple[float, float]:
    """Mean cross entropy per step of the memoryless predictor on generated data, and
    the generator's chance_loss."""
    steps, n = config["copy_len"], config["copy_n"]
    task = jgrad.data.copy_task(key, n, steps)
    num_symbols = task.x.shape[-1] - 2
    total = task.y.shape[1]
    recall = np.arange(total) >= total - (total - steps) // 2  # the last `length` steps
    y = np.asarray(task.y)
    log_p = np.where(
        recall[None, :],
        np.where((y >= 1) & (y <= num_symbols), -math.log(num_symbols), -np.inf),
        np.where(y == 0, 0.0, -np.inf),
    )
    return float(-log_p.mean()), float(task.chance_loss)


def _adding_baseline(config: dict, key) -> tuple[float, float]:
    """Mean squared error of always predicting 1, and the generator's chance_loss."""
    task = jgrad.data.adding(key, config["adding_n"], config["adding_len"])
    y = np.asarray(task.y, np.float64)
    return float(np.mean((y - 1.0) ** 2)), float(task.chance_loss)


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    k_rnn, k_copy, k_add = jax.random.split(key, 3)
    keys = jax.random.split(k_rnn, config["sequences"])
    with jax.enable_x64():
        for case in CASES:
            ln = _norms(case, config, keys)
            step = ln[:, :-1] - ln[:, 1:]  # ln ||dC/dh_{t-1}|| / ||dC/dh_t||
            arrays[f"{case}_ln_norm"] = ln
            numbers[f"{case}_max_step_log_ratio"] = float(step.max())
            numbers[f"{case}_mean_step_log_ratio"] = float(step.mean())
            if case == "identity":
                numbers["identity_max_ratio_dev"] = float(np.abs(np.expm1(step)).max())
            else:
                numbers[f"{case}_max_step_ratio"] = float(np.exp(step.max()))
    numbers["copy_baseline"], numbers["copy_chance_loss"] = _copy_baseline(
        config, k_copy
    )
    numbers["adding_baseline"], numbers["adding_chance_loss"] = _adding_baseline(
        config, k_add
    )
    numbers["copy_formula"] = 10 * math.log(8) / (config["copy_len"] + 20)
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    a, n = result.arrays, result.numbers
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    styles = {
        "relu": ("#0072B2", "ReLU, orthogonal W"),
        "identity": ("#009E73", "identity, orthogonal W"),
        "relu_gaussian": ("#D55E00", "ReLU, Gaussian W (2/N), for contrast"),
    }
    for case, (color, label) in styles.items():
        ln = np.asarray(a[f"{case}_ln_norm"])
        rel = (ln - ln[:, -1:]) / np.log(10)  # log10 ||dC/dh_t|| / ||dC/dh_T||
        t = np.arange(ln.shape[1])
        lw = 2.5 if case == "identity" else 0.8
        for i, row in enumerate(rel):
            lab = label if i == 0 else None
            ax.plot(t, row, color=color, lw=lw, alpha=0.7, label=lab)
    ax.set_xlabel("time step t (gradient flows from T = 200 back to 0)")
    ax.set_ylabel("log10 ||dC/dh_t|| / ||dC/dh_T||")
    ax.set_title(
        f"largest backward step ratio: ReLU-orthogonal {n['relu_max_step_ratio']:.3f}, "
        f"ReLU-Gaussian {n['relu_gaussian_max_step_ratio']:.3f}",
        fontsize=9,
    )
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle("Arjovsky et al. 2016: orthogonal W with ReLU, gradients never grow")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
