"""E1. Klambauer et al. 2017: SELU networks are self-normalizing.

Paper: G. Klambauer, T. Unterthiner, A. Mayr, S. Hochreiter, "Self-Normalizing Neural
Networks", NeurIPS 2017, arXiv:1706.02515.

Reproduced: section 3 and Theorem 1. With SELU and normalized weights (sum w = omega = 0,
sum w^2 = tau = 1), the map g: (mu, nu) -> (mu~, nu~) of the mean and variance of a
layer's activations has a stable, attracting fixed point at (0, 1) for the constants
``alpha01 = -sqrt(2/pi) / (exp(1/2) erfc(1/sqrt 2) - 1)`` and ``lambda01`` (eq. (14),
closed forms of the official notebook ``getSELUparameters.ipynb``): the Jacobian of g
there is ``[[0, 0.0888348], [0, 0.782648]]``, largest singular value 0.787673 < 1
(Theorem 1; the official ``SELU_calculations.nb``). Also the consequences in a network:
the last layer of a deep SELU MLP has mean 0 and variance 1 from a shifted, scaled
input, and its back-propagated gradients grow mildly, by ``E[selu'(z)^2] = 1.071575``
(z ~ N(0, 1)) in squared norm per layer (ln = 0.0691), the per-layer explosion
Philipp et al. 2018 point out.

Setup: (a) the moments ``mu~ = E[selu(z)]``, ``nu~ = E[selu(z)^2] - mu~^2`` at
``z ~ N(mu omega, nu tau)`` by ``jgrad.theory.expectation`` (Gauss-Hermite) in float64,
the Jacobian by central differences (step 1e-4). SELU's kink at 0 makes Gauss-Hermite
converge like 1/n (errors about 1e-5 at 1024 nodes), so the moments are extrapolated
from 256, 512 and 1024 nodes, removing the 1/n and 1/n^2 terms (Richardson; error
below 1e-8). (b) ``jgrad.nn.mlp(32, 512, activation="selu", init="lecun_normal")``,
zero biases, a batch of 256 (64 with --quick) inputs of mean 0.3 and variance 2; the
mean and variance of the last layer's activations over units and batch, 3 seeds.
(c) 40 layers of 512, a batch of 64 unit Gaussian inputs (the fixed point), a Gaussian
cotangent at the top (L = sum(y * g)); ``jgrad.analyze.layer_grad_norms`` gives
||dL/dh^l|| per layer, and the per-layer log growth is minus the least-squares slope of
ln ||dL/dh^l||^2 against l (positive: growing toward the input), averaged over 6 seeds
(2 with --quick).

Command: ``jgrad repro e1`` (``--quick`` for 2 backward seeds). CPU time: about 40 s
(quick 19 s), wall, on the shared 2-core CPU at a load of about 6.

Expected (the Jacobian's entries and singular value [src]: the official notebook and
Mathematica file, reproduced here by quadrature; ``../shared/research/papers.md``):

- alpha01: 1.67326 +- 1e-12 [src]
- lambda01: 1.0507 +- 1e-12 [src]
- fixed_point_mean: 0 +- 1e-07 [num]
- fixed_point_var: 1 +- 1e-07 [num]
- jacobian_dmean_dvar: 0.0888348 +- 1e-07 [src]
- jacobian_dvar_dvar: 0.782648 +- 1e-07 [src]
- jacobian_sigma_max: 0.787673 +- 1e-07 [src]
- last_layer_abs_mean_max: <= 0.05 [num]
- last_layer_var_dev_max: <= 0.1 [num]
- backward_log_growth: 0.0691 +- 0.02 [num]

The tolerances of the quadrature checks (1e-7) are about 20 times the extrapolated
quadrature's error; the network checks' are papers.md's (prototype means 0.009, -0.005,
-0.005 and variances 1.005, 0.963, 0.974 over 3 seeds). ``last_layer_*_max`` are the
worst of the 3 seeds. ``0.0691 = ln(lambda01^2 (1/2 + alpha01^2 e^2 Phi(-2)))``, the
closed form of ``ln E[selu'(z)^2]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc
from jax.scipy.stats import norm

import jgrad
from jgrad.experiments import Result

CORE = False
DEGREES = (256, 512, 1024)
STEP = 1e-4


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "fwd_depth": 32,
        "fwd_width": 512,
        "fwd_batch": 64 if quick else 256,
        "fwd_mean": 0.3,
        "fwd_var": 2.0,
        "fwd_seeds": 3,
        "bwd_depth": 40,
        "bwd_width": 512,
        "bwd_batch": 64,
        "bwd_seeds": 2 if quick else 6,
    }


def _constants():
    """alpha01, lambda01 (float64), the closed forms of the official notebook."""
    e, s2 = jnp.e, jnp.sqrt(2.0)
    r = erfc(1 / s2)
    alpha = -jnp.sqrt(2 / jnp.pi) / (jnp.exp(0.5) * r - 1)
    denom = 2 + jnp.pi - 2 * jnp.sqrt(e) * (2 + jnp.pi) * r
    denom = denom + e * jnp.pi * r**2 + 2 * e**2 * erfc(s2)
    lam = (1 - jnp.sqrt(e) * r) * jnp.sqrt(2 * jnp.pi / denom)
    return alpha, lam


@functools.partial(jax.jit, static_argnums=0)
def _moments(degree, mu, nu, alpha, lam):
    """(mu~, nu~) at omega = 0, tau = 1: z ~ N(mu omega, nu tau)."""
    omega, tau = 0.0, 1.0

    def selu(u):
        x = u + mu * omega
        return lam * jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0)))

    m = jgrad.theory.expectation(selu, nu * tau, degree=degree)
    x2 = jgrad.theory.expectation(lambda u: selu(u) ** 2, nu * tau, degree=degree)
    return jnp.stack([m, x2 - m**2])


def _moment_map(alpha, lam):
    """g(0, 1) and its Jacobian by central differences, each Richardson-extrapolated
    over the quadrature degree (errors c1/n + c2/n^2)."""
    pts = np.array([[0, 1], [STEP, 1], [-STEP, 1], [0, 1 + STEP], [0, 1 - STEP]])
    vals = []
    for d in DEGREES:
        f = jax.vmap(lambda m, v, d=d: _moments(d, m, v, alpha, lam))
        vals.append(np.asarray(f(jnp.asarray(pts[:, 0]), jnp.asarray(pts[:, 1]))))
    v1, v2, v4 = vals  # n, 2n, 4n nodes
    g = (8 * v4 - 6 * v2 + v1) / 3
    jac = np.stack([(g[1] - g[2]) / (2 * STEP), (g[3] - g[4]) / (2 * STEP)], axis=1)
    return g[0], jac


def _forward(config, key) -> tuple[float, float]:
    """Mean and variance of the last layer's activations over units and batch."""
    n = config["fwd_width"]
    net = jgrad.nn.mlp(
        config["fwd_depth"], n, activation="selu", init="lecun_normal", stacked=True
    )
    k_net, k_x = jax.random.split(key)
    _, params = net.init(k_net, (n,))
    x = jax.random.normal(k_x, (config["fwd_batch"], n))
    x = config["fwd_mean"] + np.sqrt(config["fwd_var"]) * x
    y = net.apply(params, x)
    return float(jnp.mean(y)), float(jnp.var(y))


def _backward(config, key) -> np.ndarray:
    """ln ||dL/dh^l||^2 for l = 1..depth."""
    n, depth = config["bwd_width"], config["bwd_depth"]
    net = jgrad.nn.mlp(depth, n, activation="selu", init="lecun_normal", stacked=True)
    k_net, k_x, k_g = jax.random.split(key, 3)
    _, params = net.init(k_net, (n,))
    x = jax.random.normal(k_x, (config["bwd_batch"], n))
    g = jax.random.normal(k_g, (config["bwd_batch"], n))
    flow = jgrad.analyze.layer_grad_norms(net, params, x, lambda y: jnp.sum(y * g))
    # Entries: x, the first dense layer's output, then h^1..h^depth (the stacked
    # blocks' outputs in order).
    log10 = np.asarray(flow.log10_norm, np.float64)[-depth:]
    return 2 * np.log(10) * log10


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    with jax.enable_x64():
        alpha, lam = _constants()
        fixed, jac = _moment_map(alpha, lam)
        rate = float(jnp.log(lam**2 * (0.5 + alpha**2 * jnp.e**2 * norm.cdf(-2.0))))
    numbers["alpha01"] = float(alpha)
    numbers["lambda01"] = float(lam)
    numbers["fixed_point_mean"] = float(fixed[0])
    numbers["fixed_point_var"] = float(fixed[1])
    numbers["jacobian_dmean_dvar"] = float(jac[0, 1])
    numbers["jacobian_dvar_dvar"] = float(jac[1, 1])
    numbers["jacobian_sigma_max"] = float(np.linalg.svd(jac, compute_uv=False)[0])
    numbers["jacobian_dmean_dmean"] = float(jac[0, 0])
    numbers["jacobian_dvar_dmean"] = float(jac[1, 0])
    numbers["theory_log_growth"] = rate
    k_fwd, k_bwd = jax.random.split(key)
    stats = np.array([_forward(config, jax.random.fold_in(k_fwd, s)) for s in range(3)])
    numbers["last_layer_abs_mean_max"] = float(np.abs(stats[:, 0]).max())
    numbers["last_layer_var_dev_max"] = float(np.abs(stats[:, 1] - 1).max())
    arrays["last_layer_mean"] = stats[:, 0]
    arrays["last_layer_var"] = stats[:, 1]
    curves = np.array(
        [
            _backward(config, jax.random.fold_in(k_bwd, s))
            for s in range(config["bwd_seeds"])
        ]
    )
    layers = np.arange(1, config["bwd_depth"] + 1)
    slopes = np.array([-np.polyfit(layers, c, 1)[0] for c in curves])
    numbers["backward_log_growth"] = float(slopes.mean())
    numbers["backward_log_growth_se"] = float(
        slopes.std(ddof=1) / np.sqrt(len(slopes)) if len(slopes) > 1 else np.nan
    )
    arrays["backward_ln_sq_norm"] = curves.mean(0)
    arrays["backward_slopes"] = slopes
    arrays["jacobian"] = jac
    with jax.enable_x64():
        mu, nu, field = _field(alpha, lam)
    arrays["field_mu"], arrays["field_nu"], arrays["field"] = mu, nu, field
    return Result(numbers, arrays)


def _field(alpha, lam):
    """g(mu, nu) - (mu, nu) on a grid (1024 nodes), for the figure."""
    mu, nu = np.meshgrid(np.linspace(-0.1, 0.1, 9), np.linspace(0.8, 1.5, 11))
    f = jax.vmap(lambda m, v: _moments(DEGREES[-1], m, v, alpha, lam))
    g = np.asarray(f(jnp.asarray(mu.ravel()), jnp.asarray(nu.ravel())))
    step = g - np.stack([mu.ravel(), nu.ravel()], 1)
    return mu, nu, step.reshape(mu.shape + (2,))


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    a, n = result.arrays, result.numbers
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax = axes[0]
    step = np.asarray(a["field"])
    ax.quiver(a["field_mu"], a["field_nu"], step[..., 0], step[..., 1], color="#0072B2")
    ax.plot([0], [1], "o", color="#D55E00", ms=8, zorder=3)
    ax.annotate(
        "fixed point (0, 1)",
        (0, 1),
        xytext=(0.02, 1.03),
        color="#D55E00",
        bbox={"fc": "white", "ec": "none", "alpha": 0.8},
    )
    ax.set_xticks([-0.1, -0.05, 0, 0.05, 0.1])
    ax.set_xlabel("mean mu")
    ax.set_ylabel("variance nu")
    ax.set_title(
        f"moment map g - id (omega = 0, tau = 1); sigma_max(J) = "
        f"{n['jacobian_sigma_max']:.6f}",
        fontsize=9,
    )
    ax = axes[1]
    curve = np.asarray(a["backward_ln_sq_norm"])
    layers = np.arange(1, len(curve) + 1)
    ax.plot(layers, curve, "o-", ms=3, color="#0072B2", label="measured (seed mean)")
    ax.plot(
        layers,
        curve[-1] + n["theory_log_growth"] * (layers[-1] - layers),
        "k--",
        lw=1,
        label=f"ln E[selu'(z)^2] = {n['theory_log_growth']:.4f} per layer",
    )
    ax.set_xlabel("layer l")
    ax.set_ylabel("ln ||dL/dh^l||^2")
    ax.set_title(
        f"SELU MLP, 40 x 512: growth {n['backward_log_growth']:.4f} per layer "
        "toward the input",
        fontsize=9,
    )
    ax.legend(frameon=False)
    fig.suptitle("Klambauer et al. 2017: SELU's fixed point (0, 1) and its gradients")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
