"""E6. Zhang, Dauphin & Ma 2019: Fixup, residual learning without normalization.

Paper: H. Zhang, Y. N. Dauphin, T. Ma, "Fixup Initialization: Residual Learning Without
Normalization", ICLR 2019, arXiv:1901.09321.

Reproduced: (a) the identity behind Theorem 1's lower bound on the input gradient of a
positively homogeneous network with softmax cross-entropy: with logits z, ``x . d l/dx =
z . (p - e_y) = l - H(p)`` (Euler's theorem), so ``||dl/dx|| >= (l - H(p)) / ||x||``;
(b) section 2's variance argument: in a residual stack without normalization the
second moment of ``x_l`` grows exponentially with the number of blocks L when the
branches keep their standard (He) initialization, and stays bounded when the first
branch layer is scaled by ``L^(-1/(2m-2))`` (m = 2: ``L^(-1/2)``), the Fixup rule.

Setup: (a) float64, bias-free ReLU networks: ``jgrad.nn.mlp(4, 64, activation="relu",
init="he_normal", out_dim=10)`` and the residual ``mlp(..., residual=True)`` (blocks ``x
+ dense(relu(x))``), 64 Gaussian inputs with random labels; ``dl/dx`` per example by
``jax.grad``. (b) ``x_{l+1} = x_l + W2 relu(W1 x_l)`` built from ``jgrad.nn.residual``
and ``jgrad.nn.dense`` (no biases), width 256, batch 256 unit Gaussian inputs, L in {8,
16, 32} blocks, 2 seeds (1 with --quick); the second moment ``m_l = E[x_l^2]`` over units
and batch. He branches: both layers variance 2/n; Fixup-scaled: W1 variance 2/(n L), W2
kept He for this statistic (the real Fixup init sets W2 = 0, and then ``x_L = x_0``
exactly, also checked).

Command: ``jgrad repro e6`` (``--quick`` for one seed). CPU time: about 20 s (quick 18 s).

Expected (``../shared/research/papers.md`` E6; derived there and simulated):

- identity_rel_err_mlp: <= 1e-10 [num]
- identity_rel_err_resnet: <= 1e-10 [num]
- bound_min_ratio: >= 1 [num]
- he_log_ratio_per_block_L8: 1.09861 +- 5% [num]
- he_log_ratio_per_block_L16: 1.09861 +- 5% [num]
- he_log_ratio_per_block_L32: 1.09861 +- 5% [num]
- fixup_ratio_L8: 5.96046 +- 15% [num]
- fixup_ratio_L16: 6.58325 +- 15% [num]
- fixup_ratio_L32: 6.95867 +- 15% [num]
- fixup_zero_branch_ratio: 1 +- 1e-12 [num]

He branches: the first layer doubles m (variance 2/n), ReLU halves it, the second layer
doubles it again, so a block adds 2m to m: ``m_{l+1} = 3 m_l`` and ``ln 3 = 1.0986`` per
block (the measured value is ``ln(m_L / m_0) / L``). Fixup scaling of W1 by ``L^(-1/2)``:
a block adds ``2m / L``, so ``m_L / m_0 = (1 + 2/L)^L``, bounded by e^2 = 7.389 at any
depth. The paper's own statement of these variances is from memory ([mem] in
papers.md); the identity is exact. The identity's error is relative to ``l + H(p)``, the
size of the two terms whose difference it is (``l - H(p)`` has either sign: it is
negative where the label's logit is above the mean logit under p). ``bound_min_ratio`` is
the smallest ``||x|| ||dl/dx|| / (l - H(p))`` over the examples of both networks with ``l
> H(p)`` (Theorem 1: >= 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = False
BLOCKS = (8, 16, 32)


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "width": 256,
        "batch": 256,
        "blocks": BLOCKS,
        "seeds": 1 if quick else (4 if full else 2),
        "identity_width": 64,
        "identity_depth": 4,
        "identity_batch": 64,
        "classes": 10,
    }


def _identity(residual: bool, config: dict, key) -> tuple[float, float]:
    """(max over a batch of |x . dl/dx - (l - H(p))| / (l + H(p)), min of ||x|| ||dl/dx||
    / (l - H(p)) over the examples with l > H(p)), in float64."""
    n, k = config["identity_width"], config["classes"]
    net = jgrad.nn.mlp(
        config["identity_depth"],
        n,
        activation="relu",
        init="he_normal",
        residual=residual,
        out_dim=k,
    )
    k_net, k_x, k_y = jax.random.split(key, 3)
    _, params = net.init(k_net, (n,))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jax.random.normal(k_x, (config["identity_batch"], n), jnp.float64)
    y = jax.random.randint(k_y, (config["identity_batch"],), 0, k)

    def loss(xi, yi):
        return -jax.nn.log_softmax(net.apply(params, xi))[yi]

    def entropy(xi):
        logp = jax.nn.log_softmax(net.apply(params, xi))
        return -jnp.sum(jnp.exp(logp) * logp)

    ell, grad = jax.vmap(jax.value_and_grad(loss))(x, y)
    ent = jax.vmap(entropy)(x)
    gap = ell - ent  # z . (p - e_y): either sign
    dot = jnp.sum(x * grad, axis=-1)
    rel = jnp.abs(dot - gap) / (ell + ent)  # relative to the terms' magnitudes
    bound = jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(grad, axis=-1) / gap
    ratio = jnp.min(
        jnp.where(gap > 0, bound, jnp.inf)
    )  # where the bound says something
    return float(jnp.max(rel)), float(ratio)


def _residual_stack(blocks: int, width: int, w1_var: float, w2_var: float | None):
    """``blocks`` residual blocks ``x + W2 relu(W1 x)`` (W2 = 0 for
    ``w2_var=None``); biases zero (bias_var 0)."""

    def w2():
        if w2_var is None:
            return jgrad.nn.dense(width, w_init=jgrad.init.zeros())
        return jgrad.nn.dense(width, weight_var=w2_var)

    return jgrad.nn.serial(
        *[
            jgrad.nn.residual(
                jgrad.nn.serial(
                    jgrad.nn.dense(width, weight_var=w1_var),
                    jgrad.nn.elementwise("relu"),
                    w2(),
                )
            )
            for _ in range(blocks)
        ]
    )


def _moments(blocks: int, w1_var: float, w2_var, config: dict, key) -> np.ndarray:
    """``m_l / m_0`` for l = 0..blocks, m_l = E[x_l^2] over units and batch."""
    n = config["width"]
    net = _residual_stack(blocks, n, w1_var, w2_var)
    k_net, k_x = jax.random.split(key)
    _, params = net.init(k_net, (n,))
    x = jax.random.normal(k_x, (config["batch"], n))
    _, hs = net.apply(params, x, return_intermediates=True)
    m = np.array([float(jnp.mean(x**2))] + [float(jnp.mean(h**2)) for h in hs])
    return m / m[0]


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    k_id, k_var = jax.random.split(key)
    with jax.enable_x64():
        ratios = []
        for i, (name, residual) in enumerate((("mlp", False), ("resnet", True))):
            err, ratio = _identity(residual, config, jax.random.fold_in(k_id, i))
            numbers[f"identity_rel_err_{name}"] = err
            ratios.append(ratio)
        numbers["bound_min_ratio"] = min(ratios)
    zero = []
    for L in config["blocks"]:
        for name, w1_var, w2_var in (
            ("he", 2.0, 2.0),
            ("fixup", 2.0 / L, 2.0),
            ("zero", 2.0 / L, None),
        ):
            curves = [
                _moments(
                    L, w1_var, w2_var, config, jax.random.fold_in(k_var, 1000 * L + s)
                )
                for s in range(config["seeds"])
            ]
            curve = np.exp(np.mean(np.log(curves), 0))
            arrays[f"{name}_L{L}_moment_ratio"] = curve
            if name == "he":
                numbers[f"he_log_ratio_per_block_L{L}"] = math.log(curve[-1]) / L
            elif name == "fixup":
                numbers[f"fixup_ratio_L{L}"] = float(curve[-1])
                numbers[f"fixup_ratio_L{L}_theory"] = (1 + 2 / L) ** L
            else:
                zero.append(float(curve[-1]))
    numbers["fixup_zero_branch_ratio"] = max(zero, key=lambda r: abs(r - 1))
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    colors = dict(zip(BLOCKS, ("#56B4E9", "#0072B2", "#D55E00")))
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), constrained_layout=True)
    for L in BLOCKS:
        he = np.asarray(result.arrays[f"he_L{L}_moment_ratio"])
        fx = np.asarray(result.arrays[f"fixup_L{L}_moment_ratio"])
        blk = np.arange(L + 1)
        axes[0].semilogy(
            blk, he, "o", ms=3, color=colors[L], label=f"He branches, L = {L}"
        )
        axes[1].plot(
            blk / L, fx, "o-", ms=3, color=colors[L], label=f"Fixup-scaled, L = {L}"
        )
        axes[1].plot(blk / L, (1 + 2 / L) ** blk, "--", lw=1, color=colors[L])
    blk = np.arange(max(BLOCKS) + 1)
    axes[0].semilogy(blk, 3.0**blk, "k--", lw=1, label="3^l (theory)")
    axes[0].set_xlabel("residual block l")
    axes[0].set_ylabel(r"$E[x_l^2] / E[x_0^2]$")
    axes[0].legend(frameon=False, fontsize=8)
    axes[0].set_title("standard init: second moment x 3 per block")
    axes[1].axhline(math.e**2, color="k", lw=1, ls=":", label="e^2 (L -> infinity)")
    axes[1].set_xlabel("l / L (fraction of the depth)")
    axes[1].set_ylabel(r"$E[x_l^2] / E[x_0^2]$")
    axes[1].legend(frameon=False, fontsize=8)
    axes[1].set_title("W1 scaled by L^(-1/2): bounded; dashed (1 + 2/L)^l")
    fig.suptitle(
        "Zhang, Dauphin & Ma 2019 (Fixup): residual MLP, width 256, no normalization"
    )
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
