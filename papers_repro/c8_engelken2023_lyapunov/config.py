"""C8. Engelken, Wolf & Abbott 2020/2023: Lyapunov spectra of a random tanh RNN.

Paper: R. Engelken, F. Wolf, L. F. Abbott, "Lyapunov spectra of chaotic recurrent neural
networks", Phys. Rev. Research 5, 043044 (2023), arXiv:2006.02427; with R. Engelken,
"Gradient Flossing: Improving Gradient Descent through Dynamic Control of Jacobians",
NeurIPS 2023, arXiv:2312.17306. Mean-field rate of the discrete-time network: Molgedey,
Schuchhardt & Schuster, PRL 69:3717 (1992); Cessac, J. Physique I 5 (1995).

Reproduced: the Lyapunov spectrum (exponent against index, figure 1 of the 2020 paper
for the rate network) and the largest exponent against the gain g with its mean-field
value, for the discrete-time network ``h_{t+1} = tanh(g W h_t)``, ``W_ij ~ N(0, 1/N)``,
no input. The exponents are the growth rates per step of the singular values of the
long-term Jacobian ``d h_T / d h_t``, i.e. of gradients back-propagated through time:
above 0 they explode, below 0 they vanish. Mean field (the chaotic phase, g > 1):
``q* = g^2 E[tanh(sqrt(q*) z)^2]`` and ``lambda_1 = 1/2 ln chi1``,
``chi1 = g^2 E[sech^4(sqrt(q*) z)]`` (``jgrad.theory.chi1("tanh", g^2, 0)``); for g < 1
the state decays to 0 and ``lambda_1 = ln(spectral radius of g W) -> ln g``.

Setup: ``jgrad.rnn.vanilla(N, weight_var=1)`` with zero bias and zero input, its
recurrent matrix scaled by g (the same realization for every g), N = 500 (300 with
--quick), float64. ``jgrad.analyze.lyapunov_spectrum``: the k largest exponents (k = 64;
16 with --quick; N with --full) by QR re-orthonormalisation every step, 200 steps of
burn-in then T = 600 averaged, for g = 0.8, 1.5, 2, 3, and lambda_1 alone on a grid of g
for the figure. Identity check at g = 2: ``(1/T) ln sigma_1`` of the T-step product
``d h_{200+T} / d h_200`` (``jgrad.analyze.rnn_jacobian_products``, then
``jgrad.analyze.log_singular_values``) against the QR lambda_1 on the same trajectory,
T = 400 (and T = 200, reported).

Command: ``jgrad repro c8`` (``--quick``: N = 300, k = 16, a coarser grid of g). CPU
time: about 35 s (25 s with --quick, 2.5 min with --full).

Expected (``../shared/research/papers.md``; the lambda_1 values are 1/2 ln chi1 at
float64 from ``jgrad.theory``, also re-derived by 300-node Gauss-Hermite quadrature;
tolerances as there, about three standard errors of the prototype runs):

- lambda1_g2: 0.154724 +- 0.02 [num]
- lambda1_g3: 0.310248 +- 0.02 [num]
- lambda1_g0_8: <= 0 [num]
- identity_gap_T400: 0 +- 0.02 [num]

``identity_gap_T400`` is ``(1/T) ln sigma_1 - lambda_1`` at T = 400; it is positive
and shrinks like 1/T (the T-step product's top singular value also counts the
alignment of the first and last vectors). g = 1.5 (mean field 0.0652) is too near the
transition for a tight check at N = 500 and is reported only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

import jgrad
from jgrad.experiments import Result

CORE = True
GAINS = (0.8, 1.5, 2.0, 3.0)


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "n": 300 if quick else 500,
        "k": 16 if quick else (500 if full else 64),
        "burn_in": 200,
        "steps": 600,
        "gains": list(GAINS),
        "sweep": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
        if quick
        else [round(0.5 + 0.25 * i, 2) for i in range(13)],
        "identity_gain": 2.0,
        "identity_steps": [200, 400],
    }


def mean_field_lambda1(g) -> np.ndarray:
    """1/2 ln chi1 at weight_var = g^2, bias_var = 0 (ln g below the transition)."""
    g = np.asarray(g, np.float64)
    return 0.5 * np.log(np.asarray(jgrad.theory.chi1("tanh", g**2, 0.0)))


def _name(prefix: str, g: float) -> str:
    """A number's name for a gain: ``_name("lambda1_g", 0.8) == "lambda1_g0_8"``."""
    return prefix + f"{g:g}".replace(".", "_")


def _network(config: dict, key):
    """The cell, its params at g = 1 (float64) and the initial state."""
    n = config["n"]
    cell = jgrad.rnn.vanilla(n, weight_var=1.0, bias_var=0.0)
    k_p, k_h = jax.random.split(key)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(k_p, 1))
    h0 = jax.random.normal(k_h, (n,), jnp.float64)
    return cell, params, h0


def _with_gain(params: dict, g) -> dict:
    return dict(params, w_hh=g * params["w_hh"])


def _spectrum(cell, params, h0, config, k):
    xs = jnp.zeros((config["burn_in"] + config["steps"], 1), jnp.float64)
    lam = jgrad.analyze.lyapunov_spectrum(
        cell, params, xs, h0, k=k, warmup=config["burn_in"]
    )
    return lam.exponents


def _top_singular_rates(cell, params, h0, config) -> dict:
    """(1/T) ln sigma_1(d h_{b+T} / d h_b) for each T, from one product call."""
    b, ts = config["burn_in"], config["identity_steps"]
    h_b, _ = jgrad.rnn.unroll(cell, params, jnp.zeros((b, 1), jnp.float64), h0)
    t_max = max(ts)
    prods = jgrad.analyze.rnn_jacobian_products(
        cell, params, jnp.zeros((t_max, 1), jnp.float64), h_b
    )
    out = {}
    for t in ts:
        # entry i is d h_{b+T_max} / d h_{b+i}: the product of the last T_max - i steps
        i = t_max - t
        one = jgrad.analyze.LogMatrix(prods.matrix[i], prods.log_scale[i])
        # svd="device": the host-LAPACK route fails inside `with jax.enable_x64()`
        log_s = jgrad.analyze.log_singular_values(one, svd="device")
        out[t] = float(log_s[0]) / t
    return out


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {"gains": np.asarray(config["gains"])}
    # The QR inside lyapunov_spectrum is a LAPACK call; OpenBLAS's threads busy-wait on
    # a loaded CPU (500 x 64 QRs: 25x slower), so its BLAS runs on one thread here.
    with threadpool_limits(limits=1, user_api="blas"), jax.enable_x64():
        cell, params, h0 = _network(config, key)
        for g in config["gains"]:
            lam = np.asarray(
                _spectrum(cell, _with_gain(params, g), h0, config, config["k"])
            )
            numbers[_name("lambda1_g", g)] = float(lam[0])
            numbers[_name("mean_field_g", g)] = float(mean_field_lambda1(g))
            arrays[_name("spectrum_g", g)] = lam
        sweep = np.asarray(config["sweep"], np.float64)
        top = jax.vmap(lambda g: _spectrum(cell, _with_gain(params, g), h0, config, 1))
        arrays["sweep_g"] = sweep
        arrays["sweep_lambda1"] = np.asarray(top(jnp.asarray(sweep)))[:, 0]
        g_fine = np.linspace(0.3, max(3.6, sweep.max() + 0.1), 200)
        arrays["theory_g"] = g_fine
        arrays["theory_lambda1"] = mean_field_lambda1(g_fine)
        g_id = config["identity_gain"]
        rates = _top_singular_rates(cell, _with_gain(params, g_id), h0, config)
    lam1 = numbers[_name("lambda1_g", g_id)]
    for t, r in rates.items():
        numbers[f"top_singular_rate_T{t}"] = r
        numbers[f"identity_gap_T{t}"] = r - lam1
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    a = result.arrays
    colors = {0.8: "#0072B2", 1.5: "#009E73", 2.0: "#E69F00", 3.0: "#D55E00"}
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), constrained_layout=True)
    ax = axes[0]
    for g in np.asarray(a["gains"]):
        lam = np.asarray(a[_name("spectrum_g", g)])
        ax.plot(np.arange(1, lam.size + 1), lam, ".-", ms=4, lw=0.8,
                color=colors.get(float(g)), label=f"g = {g:g}")  # fmt: skip
        mf = float(result.numbers[_name("mean_field_g", g)])
        ax.axhline(mf, color=colors.get(float(g)), ls=":", lw=1)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("index i")
    ax.set_ylabel("Lyapunov exponent lambda_i (per step)")
    ax.set_title("spectrum (dotted: mean-field lambda_1)")
    if lam.size > 100:  # the full spectrum: its tail falls steeply at the right
        ax.legend(frameon=False, fontsize=8, loc="lower left")
    else:  # the top exponents: between g = 0.8 (below 0) and the chaotic ones
        ax.legend(
            frameon=False, fontsize=8, loc="lower right", bbox_to_anchor=(1, 0.12)
        )
    ax = axes[1]
    ax.plot(a["theory_g"], a["theory_lambda1"], "k-", lw=1.2,
            label="mean field 1/2 ln chi1")  # fmt: skip
    ax.plot(a["sweep_g"], a["sweep_lambda1"], "o", color="#D55E00", mfc="none",
            label="QR lambda_1, one network")  # fmt: skip
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(1, color="0.6", lw=0.6, ls="--")
    ax.set_xlabel("gain g")
    ax.set_ylabel("largest Lyapunov exponent lambda_1")
    ax.set_title("lambda_1 vs g: < 0 vanishing, > 0 exploding gradients")
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle("Engelken, Wolf & Abbott 2023: h_{t+1} = tanh(g W h_t)")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
