"""C5. Bengio et al. 1994, Hochreiter 1991, Pascanu et al. 2013: RNN conditions, clipping.

Papers: Y. Bengio, P. Simard, P. Frasconi, "Learning long-term dependencies with gradient
descent is difficult", IEEE Trans. Neural Networks 5(2):157-166, 1994 (no arXiv id);
S. Hochreiter, "Untersuchungen zu dynamischen neuronalen Netzen", diploma thesis, TU
Munich, 1991; R. Pascanu, T. Mikolov, Y. Bengio, "On the difficulty of training
recurrent neural networks", ICML 2013, arXiv:1211.5063.

Reproduced: Pascanu et al. section 2.1 (the step Jacobian of ``h_t = phi(x_t W_ih + b +
h_{t-1} W_hh)`` has norm at most gamma ||W_hh||_2, gamma = sup |phi'|, so lambda_1 =
||W_hh||_2 < 1/gamma makes ``||dh_T/dh_t||`` vanish like (gamma lambda_1)^(T-t), and
lambda_1 > 1/gamma is necessary for it to explode; gamma = 1 for tanh, 1/4 for the
logistic sigmoid) and Algorithm 1 (rescale the gradient to norm c when its norm exceeds
c), as in their figures of ||dh_T/dh_t|| against T - t.

Setup: vanilla RNNs (``jgrad.rnn.vanilla``), 64 units, 8 inputs, T = 100 steps of unit
Gaussian inputs, W_hh = rho Q with Q Haar orthogonal (``jgrad.init.orthogonal``) so that
lambda_1 = rho exactly; tanh rho in {0.5, 0.9, 1.5}, sigmoid rho in {2, 3.9, 6},
identity rho in {0.9, 1.5}; 20 sequences per case (5 with --quick); float64.
``jgrad.analyze.pascanu_bound`` gives log ||dh_T/dh_t||_2 for every t from the exact
step-Jacobian products (``rnn_jacobian_products``, rescaled in log space). Clipping: the
gradients of L = sum(h_T * g) of each network, and the same scaled by 1e-3 and 1e3, through
``jgrad.optim.chain("sgd", 0.01, clip_global_norm=1.0)`` (Pascanu's default c = 1),
read back with ``jgrad.optim.clip_stats``.

Command: ``jgrad repro c5`` (``--quick`` for 5 sequences). CPU time: about 25 s (quick
20 s).

Expected (``../shared/research/papers.md``):

- bound_violations: <= 0 [src]
- identity_max_rel_err: <= 1e-10 [num]
- tanh_rate_rho1_5: <= 0.405465 [num]
- clip_norm_rel_err: <= 1e-06 [src]
- clip_cosine_err: <= 1e-06 [src]
- clip_recorded_norm_rel_err: <= 1e-06 [num]
- clip_update_excess: <= 1e-06 [src]

bound_violations counts the (t, sequence, case) with lambda_1 < 1/gamma (tanh rho 0.5,
0.9; sigmoid rho 2, 3.9; identity rho 0.9) where ||dh_T/dh_t||_2 > (gamma lambda_1)^(T-t)
(1 + 1e-9): an inequality, no tolerance. For the identity, ||dh_T/dh_t||_2 = rho^(T-t) exactly (so
explosion needs rho > 1): the largest relative error over t and sequences. With tanh at
rho = 1.5 the largest rate (1/T) ln ||dh_T/dh_0||_2 over the sequences stays below
ln 1.5 (saturation lowers it; its value is C8's Lyapunov exponent). The clipping checks:
the clipped gradient's norm is min(||g||, c), its direction g's (1 - cosine), the recorded
norm is ||g||, and the SGD update's norm is at most lr c (the excess ||update|| / (lr c) - 1 at most
1e-6, as the other clipping checks: float64 rounding gives 2e-16). The sufficient-condition
sentence is read in Pascanu et al. sec. 2.1 and the clipping rule in their code; the
gamma = 1/4 inversion for the sigmoid is from memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = True
CASES = {  # activation: spectral norms rho of W_hh
    "tanh": (0.5, 0.9, 1.5),
    "sigmoid": (2.0, 3.9, 6.0),
    "identity": (0.9, 1.5),
}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "hidden": 64,
        "inputs": 8,
        "steps": 100,
        "sequences": 5 if quick else (50 if full else 20),
        "clip_norm": 1.0,
        "learning_rate": 0.01,
    }


def _network(activation: str, rho: float, config: dict, key):
    """A vanilla cell with ``W_hh = rho Q`` (float64 params) and a batch of sequences."""
    cell = jgrad.rnn.vanilla(config["hidden"], activation)
    k_cell, k_q, k_x = jax.random.split(key, 3)
    params = cell.init(k_cell, config["inputs"])
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    h = config["hidden"]
    params["w_hh"] = jgrad.init.orthogonal(rho)(k_q, (h, h), jnp.float64)
    shape = (config["sequences"], config["steps"], config["inputs"])
    xs = jax.random.normal(k_x, shape, jnp.float64)
    return cell, params, xs, cell.init_carry().astype(jnp.float64)


def _clip_checks(grads: list, config: dict) -> dict:
    """Global-norm clipping through jgrad.optim.chain on each gradient."""
    c, lr = config["clip_norm"], config["learning_rate"]
    tx = jgrad.optim.chain("sgd", lr, clip_global_norm=c)
    err = {"norm": 0.0, "cos": 0.0, "recorded": 0.0, "update": 0.0}
    for g in grads:
        updates, state = tx.update(g, tx.init(g), g)
        flat_g = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])
        flat_u = np.concatenate([np.ravel(a) for a in jax.tree.leaves(updates)])
        clipped = -flat_u / lr
        norm_g, norm_c = np.linalg.norm(flat_g), np.linalg.norm(clipped)
        want = min(norm_g, c)
        cos = flat_g @ clipped / (norm_g * norm_c)
        recorded = float(jgrad.optim.clip_stats(state).global_norm)
        err["norm"] = max(err["norm"], abs(norm_c - want) / want)
        err["cos"] = max(err["cos"], abs(1 - cos))
        err["recorded"] = max(err["recorded"], abs(recorded - norm_g) / norm_g)
        err["update"] = max(err["update"], np.linalg.norm(flat_u) / (lr * c))
    return {
        "clip_norm_rel_err": err["norm"],
        "clip_cosine_err": err["cos"],
        "clip_recorded_norm_rel_err": err["recorded"],
        "clip_update_excess": err["update"] - 1,
    }


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    T = config["steps"]
    dist = T - np.arange(T)  # T - t for t = 0..T-1
    violations, identity_err, grads = 0, 0.0, []
    with jax.enable_x64():
        for i, (activation, rhos) in enumerate(CASES.items()):
            for j, rho in enumerate(rhos):
                k = jax.random.fold_in(key, 10 * i + j)
                cell, params, xs, carry0 = _network(activation, rho, config, k)
                bound = jax.jit(
                    jax.vmap(
                        lambda x: jgrad.analyze.pascanu_bound(cell, params, x, carry0)
                    )
                )(xs)
                log_norms = np.asarray(bound.log_norms)  # (sequences, T)
                gamma = float(bound.gamma[0])
                name = f"{activation}_rho{rho:g}"
                arrays[f"{name}_log_norms"] = log_norms
                numbers[f"{name}_w_hh_norm"] = float(bound.w_hh_norm[0])
                numbers[f"{name}_gamma"] = gamma
                numbers[f"{name}_max_rate"] = float(np.max(log_norms[:, 0]) / T)
                numbers[f"{name}_fitted_log_rate"] = float(
                    np.mean(bound.measured_log_rate)
                )
                if gamma * rho < 1:
                    limit = dist * math.log(gamma * rho) + math.log1p(1e-9)
                    violations += int(np.sum(log_norms > limit))
                if activation == "identity":
                    rel = np.abs(np.expm1(log_norms - dist * math.log(rho)))
                    identity_err = max(identity_err, float(rel.max()))
                g = jax.random.normal(jax.random.fold_in(k, 1), (config["hidden"],))
                grad = jax.grad(
                    lambda p, x=xs[0], g=g: jnp.sum(
                        jgrad.rnn.unroll(cell, p, x, carry0)[0] * g
                    )
                )(params)
                grads += [
                    jax.tree.map(lambda a, s=s: s * a, grad) for s in (1e-3, 1, 1e3)
                ]
        numbers.update(_clip_checks(grads, config))
    numbers["bound_violations"] = violations
    numbers["identity_max_rel_err"] = identity_err
    numbers["tanh_rate_rho1_5"] = numbers["tanh_rho1.5_max_rate"]
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    colors = ("#0072B2", "#009E73", "#D55E00")
    gammas = {"tanh": "1", "sigmoid": "1/4", "identity": "1"}
    fig, axes = plt.subplots(1, len(CASES), figsize=(15, 4.2), constrained_layout=True)
    for ax, (activation, rhos) in zip(axes, CASES.items()):
        for rho, color in zip(rhos, colors):
            name = f"{activation}_rho{rho:g}"
            ln = np.asarray(result.arrays[f"{name}_log_norms"])
            T = ln.shape[1]
            dist = T - np.arange(T)
            lo, med, hi = np.percentile(ln, [0, 50, 100], axis=0)
            ax.fill_between(dist, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(dist, med, color=color, lw=1.6, label=rf"$\lambda_1$ = {rho:g}")
            gamma = result.numbers[f"{name}_gamma"]
            ax.plot(
                dist,
                dist * np.log(gamma * rho),
                "--",
                color=color,
                lw=1,
                label=rf"bound $(\gamma\lambda_1)^{{T-t}}$, $\gamma\lambda_1$ = {gamma * rho:.3g}",
            )
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("T - t (steps back)")
        ax.set_title(f"{activation} ($\\gamma$ = {gammas[activation]}), 64 units")
        ax.legend(frameon=False, fontsize=7.5)
    axes[0].set_ylabel(r"$\ln \|\partial h_T / \partial h_t\|_2$")
    fig.suptitle(
        "Pascanu et al. 2013: gradient norm through time (median and range over "
        "sequences) under the bound; $\\lambda_1 < 1/\\gamma$ vanishes"
    )
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
