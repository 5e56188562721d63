"""C4. Pennington, Schoenholz & Ganguli 2017: dynamical isometry.

Paper: J. Pennington, S. S. Schoenholz, S. Ganguli, "Resurrecting the sigmoid in deep
learning through dynamical isometry: theory and practice", NeurIPS 2017,
arXiv:1711.04735.

Reproduced: the first two moments of the spectrum of J J^T (J = d x^L / d x^0, the
input-output Jacobian) at criticality, eqs. for m1 and sigma^2 of section 2 and the
spectra of figure 2: with mu_k = E[phi'(sqrt(q*) z)^(2k)], m1 = (sigma_w^2 mu_1)^L = 1
and ``sigma^2 = L (mu_2 / mu_1^2 - 1 - s_1)`` with s_1 = -1 for Gaussian and 0 for
orthogonal weights. ReLU (mu_1 = mu_2 = 1/2) gives 2L (Gaussian) and L (orthogonal):
no weights make it isometric. tanh at small q* with orthogonal weights gives a variance
near 0 (isometry); with Gaussian weights about L.

Setup: ``jgrad.nn.mlp(16, 400)`` on the critical line (``jgrad.theory
.critical_weight_var``): ReLU at sigma_w^2 = 2, sigma_b^2 = 0; tanh at sigma_b^2 = 1e-4
(sigma_w^2 = 1.086026, q* = 0.045709) and, for the figure, tanh orthogonal at sigma_b^2
= 0.05 (larger q*); Gaussian and Haar-orthogonal weights. Inputs x^0 = phi(sqrt(q*) z)
(so h^1 has variance q*; ReLU: q = 1), 4 per network, 6 networks (3 with --quick);
float64. J of the first L = 4, 8, 16 layers from ``jgrad.analyze.layer_jacobians`` and
``log_singular_values`` (exact; XLA's SVD, see the README); mean and variance of the
eigenvalues of J J^T (squared singular values, zeros included) averaged over inputs and
networks; mu_1, mu_2 by ``jgrad.theory.expectation``.

Command: ``jgrad repro c4`` (``--quick`` for 3 networks). CPU time: about 25 s (quick
15 s) on quiet cores; 4 min on 2 cores under a load of 6.

Expected (tolerances from the prototype runs; ``../shared/research/papers.md``):

- tanh_orthogonal_var_L16: 0.183407 +- 10% [num]
- tanh_orthogonal_mean_L16: 1 +- 0.02 [num]
- tanh_gaussian_var_L4: 4.04585 +- 25% [num]
- tanh_gaussian_var_L8: 8.0917 +- 25% [num]
- relu_gaussian_var_L4: 8 +- 25% [num]
- relu_gaussian_var_L8: 16 +- 25% [num]
- relu_orthogonal_var_L4: 4 +- 25% [num]
- relu_orthogonal_var_L8: 8 +- 25% [num]
- tanh_orth_over_gauss_max: <= 0.05 [num]
- relu_orthogonal_var_over_L_min: >= 0.5 [num]

The predictions are 16 x 0.0114629 (tanh orthogonal), L x 1.0114629 (tanh Gaussian), 2L
and L (ReLU); the two ratios are the largest over L of var(tanh orthogonal) /
var(tanh Gaussian) and the smallest over L of var(ReLU orthogonal) / L. The general
form of sigma^2 with s_1 is from memory of the paper (the Gaussian ReLU case is read in a
source); every case was re-derived and simulated for papers.md. Finite width N spreads
ReLU's spectrum further as L/N grows, so ReLU's variances are checked at L <= 8 only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = True
CASES = {  # name: (activation, init, bias_var)
    "relu_gaussian": ("relu", "gaussian", 0.0),
    "relu_orthogonal": ("relu", "orthogonal", 0.0),
    "tanh_gaussian": ("tanh", "gaussian", 1e-4),
    "tanh_orthogonal": ("tanh", "orthogonal", 1e-4),
    "tanh_orthogonal_q0.05": ("tanh", "orthogonal", 0.05),
}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "width": 400,
        "depths": [4, 8, 16],
        "seeds": 3 if quick else (12 if full else 6),
        "inputs": 4,
    }


def _theory(activation: str, init: str, bias_var: float) -> dict:
    """weight_var, q* and the predicted variance rate sigma^2 / L at criticality."""
    wv = float(jgrad.theory.critical_weight_var(activation, bias_var))
    act = jgrad.nn.activation(activation)
    # ReLU's q is marginal at (2, 0): any input length is kept, and mu_k do not depend on it
    q = (
        1.0
        if activation == "relu"
        else float(jgrad.theory.q_fixed_point(act, wv, bias_var))
    )
    mu1 = float(jgrad.theory.expectation(lambda u: act.deriv(u) ** 2, q))
    mu2 = float(jgrad.theory.expectation(lambda u: act.deriv(u) ** 4, q))
    s1 = 0.0 if init == "orthogonal" else -1.0
    return {
        "weight_var": wv,
        "q_star": q,
        "m1": (wv * mu1),
        "rate": mu2 / mu1**2 - 1 - s1,
    }


def _network(case: tuple, th: dict, config: dict):
    activation, init, bias_var = case
    return jgrad.nn.mlp(
        max(config["depths"]),
        config["width"],
        activation=activation,
        init=init,
        weight_var=th["weight_var"],
        bias_var=bias_var,
    )


def _spectra_fn(net, activation: str, th: dict, config: dict):
    """``key -> (inputs, depths, N)``: the eigenvalues of J J^T of the first L layers of
    one network drawn from key, for each input and depth. The products are jgrad's
    (jitted, float64, rescaled); their singular values come from numpy's LAPACK SVD."""
    n = config["width"]
    phi = jgrad.nn.activation(activation).fn
    idx = np.array(config["depths"]) - 1

    @jax.jit
    def products(params, xs):  # (inputs, depths, N, N), scaled by exp(log_scale)
        def one(x):  # every prefix d x^l / d x^0 in one sweep, at the chosen depths
            mats = jgrad.analyze.layer_jacobians(net, params, x).mats
            prods = jgrad.analyze.input_products(jnp.stack(mats))
            return prods.matrix[idx], prods.log_scale[idx]

        return jax.vmap(one)(xs)

    def eigenvalues(key) -> np.ndarray:
        k_net, k_x = jax.random.split(key)
        _, params = net.init(k_net, (n,))  # eager: XLA's jitted QR is slow on CPU
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        z = jax.random.normal(k_x, (config["inputs"], n), jnp.float64)
        matrix, log_scale = products(params, phi(np.sqrt(th["q_star"]) * z))
        sv = np.linalg.svd(np.asarray(matrix), compute_uv=False)  # LAPACK, float64
        return (sv * np.exp(np.asarray(log_scale))[..., None]) ** 2

    return eigenvalues


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    depths = config["depths"]
    with jax.enable_x64():
        for i, (name, case) in enumerate(CASES.items()):
            th = _theory(*case)
            spectra = _spectra_fn(_network(case, th, config), case[0], th, config)
            keys = [
                jax.random.fold_in(key, 100 * i + s) for s in range(config["seeds"])
            ]
            ev = np.concatenate(
                [np.asarray(spectra(k)) for k in keys]
            )  # (nets x inputs, L, N)
            for j, L in enumerate(depths):
                e = ev[:, j]  # (networks x inputs, N)
                numbers[f"{name}_mean_L{L}"] = float(e.mean())
                numbers[f"{name}_var_L{L}"] = float(e.var(axis=1).mean())
                numbers[f"{name}_var_sem_L{L}"] = float(
                    e.var(axis=1).std(ddof=1) / np.sqrt(len(e))
                )
                numbers[f"{name}_pred_L{L}"] = L * th["rate"]
                arrays[f"{name}_sq_sv_L{L}"] = e.ravel()
            numbers[f"{name}_q_star"] = th["q_star"]
            numbers[f"{name}_weight_var"] = th["weight_var"]
    numbers["tanh_orth_over_gauss_max"] = max(
        numbers[f"tanh_orthogonal_var_L{L}"] / numbers[f"tanh_gaussian_var_L{L}"]
        for L in depths
    )
    numbers["relu_orthogonal_var_over_L_min"] = min(
        numbers[f"relu_orthogonal_var_L{L}"] / L for L in depths
    )
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    depths = sorted(
        int(k.rsplit("_L", 1)[1])
        for k in result.arrays
        if k.startswith("relu_gaussian_sq_sv")
    )
    colors = dict(zip(depths, ("#56B4E9", "#0072B2", "#D55E00")))
    titles = {
        "relu_gaussian": r"ReLU, Gaussian ($\sigma_w^2=2$)",
        "relu_orthogonal": r"ReLU, orthogonal ($\sigma_w^2=2$)",
        "tanh_gaussian": r"tanh, Gaussian ($\sigma_b^2=10^{-4}$)",
        "tanh_orthogonal": r"tanh, orthogonal ($\sigma_b^2=10^{-4}$)",
        "tanh_orthogonal_q0.05": r"tanh, orthogonal ($\sigma_b^2=0.05$)",
    }
    fig, axes = plt.subplots(1, len(CASES), figsize=(17, 3.8), constrained_layout=True)
    bins = np.logspace(-4, 2.5, 70)
    for ax, name in zip(axes, CASES):
        for L in depths:
            e = np.asarray(result.arrays[f"{name}_sq_sv_L{L}"])
            zeros = np.mean(e < bins[0])
            var = result.numbers[f"{name}_var_L{L}"]
            pred = result.numbers[f"{name}_pred_L{L}"]
            ax.hist(
                e[e >= bins[0]],
                bins=bins,
                density=False,
                weights=np.full((e >= bins[0]).sum(), 1.0 / e.size),
                histtype="step",
                lw=1.4,
                color=colors[L],
                label=f"L={L}: var {var:.3g} (theory {pred:.3g})"
                + (f", {100 * zeros:.0f}% < 1e-4" if zeros > 0.005 else ""),
            )
        ax.axvline(1.0, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1)
        ax.set_title(titles[name], fontsize=10)
        ax.set_xlabel(r"squared singular value $\lambda$ of $J$")
        ax.legend(frameon=False, fontsize=7, loc="upper left")
    axes[0].set_ylabel("fraction of eigenvalues of $JJ^T$ per bin")
    fig.suptitle(
        "Pennington et al. 2017: spectrum of $JJ^T$ at criticality, N = 400 "
        "(mean 1 in every case; only orthogonal tanh at small q* stays near 1)"
    )
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
