"""E11. Pennington, Schoenholz & Ganguli 2018: the emergence of spectral universality.

Paper: J. Pennington, S. S. Schoenholz, S. Ganguli, "The emergence of spectral
universality in deep networks", AISTATS 2018, PMLR 84:1924-1932, arXiv:1802.09979.

Reproduced: the abstract's claim that there are limiting spectra of the input-output
Jacobian that stay concentrated around one as depth grows when the hyperparameters are
scaled with depth. For a critical network (``weight_var mu1 = 1``) with orthogonal
weights, the squared singular values of J (eigenvalues of ``J J^T``) have mean 1 and
variance ``sigma^2 = L (mu2 / mu1^2 - 1)``, ``mu_k = E[phi'(sqrt(q*) z)^(2k)]`` (the
free-probability moments of Pennington et al. 2017, orthogonal case). For tanh
``mu2 / mu1^2 - 1`` falls with q* (about ``8 q*^2`` for small q*), so choosing the point
of the critical line with ``L (mu2 / mu1^2 - 1) = 0.2`` at every depth (q* shrinking like
``L^(-1/2)``) keeps the spectrum's spread fixed as L grows from 4 to 64.

Setup: for L in {4, 16, 64}, bisection (in log bias_var) on tanh's critical line for
``L (mu2 / mu1^2 - 1) = 0.2``: ``jgrad.theory.critical_weight_var`` gives weight_var,
``jgrad.theory.q_fixed_point`` q*, and ``jgrad.theory.expectation`` (Gauss-Hermite,
float64) mu1 and mu2. Then ``jgrad.nn.mlp(L, 512, activation="tanh",
init="orthogonal", weight_var=..., bias_var=...)`` in float64, one input of variance
``(q* - bias_var) / weight_var`` (so that every pre-activation has variance q*), and
the spectrum of dy/dx by ``jgrad.analyze.input_output_spectrum``; the variance of the
512 eigenvalues of ``J J^T``, averaged over 3 seeds (1 with --quick). For the figure,
L = 64 at the q* chosen for L = 4 (predicted variance 3.2; not with --quick): without
the scaling the spectrum spreads.

Command: ``jgrad repro e11`` (``--quick`` for 1 seed). CPU time: about 150 s (quick
46 s), wall, on the shared 2-core CPU at a load of about 6.

Expected (papers.md: measured variance within +-15% of the prediction at N = 512; C4's
prototype of the same formula gave var/pred 1.001-1.011 at L <= 16):

- var_L4: 0.2 +- 15% [num]
- var_L16: 0.2 +- 15% [num]
- var_L64: 0.2 +- 15% [num]

The paper's own parameterization and limiting densities are from memory and are not
checked; the formula is C4's, evaluated by quadrature (its small-q* expansion is not
used).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = False
TARGET = 0.2


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "depths": [4, 16, 64],
        "width": 512,
        "target_var": TARGET,
        "seeds": 1 if quick else 3,
        "contrast": not quick,
    }


def _point(bias_var: float):
    """(rate mu2 / mu1^2 - 1, weight_var, q*, mu1) on tanh's critical line, float64."""
    bv = jnp.asarray(bias_var, jnp.float64)
    wv = jgrad.theory.critical_weight_var("tanh", bv)
    q = jgrad.theory.q_fixed_point("tanh", wv, bv)

    def d2(u):  # phi'(u)^2
        return (1 - jnp.tanh(u) ** 2) ** 2

    mu1 = jgrad.theory.expectation(d2, q)
    mu2 = jgrad.theory.expectation(lambda u: d2(u) ** 2, q)
    return float(mu2 / mu1**2 - 1), float(wv), float(q), float(mu1)


def _bias_var_for(rate: float) -> float:
    """The bias_var on the critical line where mu2 / mu1^2 - 1 = rate (increasing in
    bias_var), by bisection in log bias_var to 1e-12 relative."""
    lo, hi = np.log(1e-12), np.log(1.0)
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _point(np.exp(mid))[0] < rate else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def _sampler(depth, width, wv, bv, q):
    """key -> eigenvalues of J J^T for one network and input, float64."""
    kw = {
        "activation": "tanh",
        "init": "orthogonal",
        "weight_var": wv,
        "bias_var": bv,
    }
    # Drawn in the stacked layout (one jitted, vmapped init for all layers), analysed in
    # the serial one (its sweep is the faster); the weights are the same either way.
    stacked = jgrad.nn.mlp(depth, width, stacked=True, **kw)
    net = jgrad.nn.mlp(depth, width, **kw)
    init = jax.jit(lambda k: stacked.init(k, (width,))[1])

    def sample(key):
        k_net, k_x = jax.random.split(key)
        params = jgrad.nn.unstack_params(stacked, init(k_net))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x = np.sqrt((q - bv) / wv) * jax.random.normal(k_x, (width,), jnp.float64)
        # A near-isometric spectrum never compresses: compress=False skips the checks.
        spec = jgrad.analyze.input_output_spectrum(
            net, params, x, svd="device", compress=False
        )
        return np.exp(2 * np.asarray(spec.log_sv, np.float64))

    return sample


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    n = config["width"]
    with jax.enable_x64():
        for depth in config["depths"]:
            bv = _bias_var_for(config["target_var"] / depth)
            rate, wv, q, mu1 = _point(bv)
            numbers[f"q_star_L{depth}"] = q
            numbers[f"weight_var_L{depth}"] = wv
            numbers[f"bias_var_L{depth}"] = bv
            numbers[f"chi1_L{depth}"] = wv * mu1
            numbers[f"predicted_var_L{depth}"] = depth * rate
            sample = _sampler(depth, n, wv, bv, q)
            eigs = [
                sample(jax.random.fold_in(key, 100 * depth + s))
                for s in range(config["seeds"])
            ]
            numbers[f"var_L{depth}"] = float(np.mean([e.var() for e in eigs]))
            numbers[f"mean_L{depth}"] = float(np.mean([e.mean() for e in eigs]))
            arrays[f"eigs_L{depth}"] = np.concatenate(eigs)
    if config["contrast"]:  # the deepest network at the shallowest one's q*
        with jax.enable_x64():
            d0, d1 = config["depths"][0], config["depths"][-1]
            bv = numbers[f"bias_var_L{d0}"]
            rate, wv, q, _ = _point(bv)
            eigs = _sampler(d1, n, wv, bv, q)(jax.random.fold_in(key, 7))
            numbers["unscaled_predicted_var"] = d1 * rate
            numbers["unscaled_var"] = float(eigs.var())
            arrays["eigs_unscaled"] = eigs
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    n, a = result.numbers, result.arrays
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = ["#D55E00", "#0072B2", "#009E73"]
    depths = sorted(int(k[6:]) for k in a if k.startswith("eigs_L"))
    bins = np.linspace(0, 3, 61)
    for depth, color in zip(depths, colors, strict=False):
        axes[0].hist(
            a[f"eigs_L{depth}"],
            bins=bins,
            density=True,
            histtype="step",
            lw=1.5,
            color=color,
            label=f"L = {depth}, q* = {n[f'q_star_L{depth}']:.3f}: "
            f"var {n[f'var_L{depth}']:.3f}",
        )
    axes[0].set_xlabel("squared singular value of J (eigenvalue of J J^T)")
    axes[0].set_ylabel("density")
    axes[0].set_title(
        "q* scaled with depth so that L (mu2/mu1^2 - 1) = 0.2", fontsize=9
    )
    axes[0].legend(frameon=False, fontsize=8)
    ax = axes[1]
    ls = np.array(depths)
    ax.plot(ls, [n[f"var_L{d}"] for d in depths], "o-", color="#0072B2",
            label="measured, q* scaled")  # fmt: skip
    ax.plot(ls, [n[f"predicted_var_L{d}"] for d in depths], "k--", lw=1,
            label="predicted L (mu2/mu1^2 - 1)")  # fmt: skip
    d0 = depths[0]
    fixed = n[f"predicted_var_L{d0}"] / d0
    ax.plot(ls, fixed * ls, ":", color="#D55E00",
            label=f"predicted at fixed q* = {n[f'q_star_L{d0}']:.3f}")  # fmt: skip
    if "unscaled_var" in n:
        ax.plot([depths[-1]], [n["unscaled_var"]], "s", color="#D55E00",
                label="measured at fixed q*")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth L")
    ax.set_ylabel("variance of the eigenvalues of J J^T")
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle("Pennington et al. 2018: orthogonal tanh, critical, N = 512")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
