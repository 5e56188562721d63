"""C1. Schoenholz et al. 2017: chi_1 sets the per-layer rate of the back-propagated gradient.

Paper: S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep Information
Propagation", ICLR 2017, arXiv:1611.01232 (the q map and chi_1 from B. Poole et al.,
"Exponential expressivity in deep neural networks through transient chaos", NeurIPS 2016,
arXiv:1606.05340).

Reproduced: section 5 (back-propagation), ``E[(delta^l)^2] = E[(delta^L)^2] exp(-(L - l) /
xi_grad)`` with ``1/xi_grad = -ln chi_1``, ``chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]``:
in wide random tanh networks the squared back-propagated gradient is multiplied by chi_1
per layer, so it vanishes in the ordered phase (chi_1 < 1), explodes in the chaotic phase
(chi_1 > 1) and keeps its size on the critical line chi_1 = 1 (the order-chaos phase
diagram, their figure 1). Theory from ``jgrad.theory.mean_field`` (q*, chi_1 by
Gauss-Hermite quadrature, float64) and ``critical_weight_var`` (the critical line).

Setup: tanh MLP of depth 50 and width 1024 (2048 with --full), weights
``N(0, sigma_w^2 / N)``, biases ``N(0, sigma_b^2)``, at (sigma_w^2, sigma_b^2) = (1.5, 0.05)
(ordered), (2.5, 0.05) (chaotic) and (1.760955, 0.05) (critical); a batch of 32 Gaussian
inputs scaled so that the first pre-activations have variance q*, a unit Gaussian
cotangent at the output (L = sum(y * g)); 6 seeds (2 with --quick), float64. Measured
with ``jgrad.analyze.layer_grad_norms``: ``ln E||dL/dh^l||^2`` at every layer output
h^l = tanh(z^l), l = 1..50; the per-layer log growth is minus the least-squares slope of
it against l (positive when the gradient grows toward the input), averaged over seeds,
against ``ln chi_1``. Also the mean squared singular value of one layer's Jacobian
``diag(phi'(z^l)) W^l^T`` (``jgrad.analyze.layer_jacobians``), averaged over the 50
layers of one network at two inputs, against chi_1.

Command: ``jgrad repro c1`` (``--quick``: 2 seeds). CPU time: about 65 s
(``--quick`` about 40 s) on 2 busy cores.

Expected (ln chi_1 from 201-node Gauss-Hermite quadrature, tolerances at about three
standard errors of the prototype runs; ``../shared/research/papers.md``, C1):

- ordered_log_growth: -0.0633272 +- 0.015 [num]
- chaotic_log_growth: 0.125324 +- 0.015 [num]
- critical_log_growth: >= -0.015 and <= 0.015 [num]
- ordered_layer_jacobian_msv: 0.938636 +- 3% [num]
- chaotic_layer_jacobian_msv: 1.13352 +- 3% [num]

The three rates are the paper's claim that the phases are the regions of vanishing and
exploding gradients ([src], abstract); chi_1 and its values here are re-derived [num].
The per-seed spread is about 0.01 at width 512 and 0.005 at 1024 (a finite-width
effect), so the critical bound is asserted on the seed mean only; no relative tolerance
is used near criticality, where ln chi_1 -> 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = True
COLORS = {"ordered": "#0072B2", "critical": "#009E73", "chaotic": "#D55E00"}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "depth": 50,
        "width": 2048 if full else 1024,
        "batch": 32,
        "seeds": 2 if quick else 6,
        "jacobian_inputs": 1 if quick else 2,
        "bias_var": 0.05,
        # sigma_w^2 of each point; None: on the critical line (chi_1 = 1)
        "points": {"ordered": 1.5, "critical": None, "chaotic": 2.5},
    }


def _scaled(params, weight_var, bias_var):
    """Params of a unit-variance network (weights N(0, 1/N), biases N(0, 1)) scaled to
    (weight_var, bias_var), in float64: one compiled program serves every point."""

    def scale(path, a):
        s = jnp.sqrt(weight_var if path[-1].key == "w" else bias_var)
        return s * a.astype(jnp.float64)

    return jax.tree_util.tree_map_with_path(scale, params)


def _measure(config: dict):
    """Jitted functions of one network's unit-variance params: ``grads(key,
    weight_vars, bias_var, q_stars)`` -> ``ln E||dL/dh^l||^2`` (points, L) at every
    point, the same weights scaled to each (common random numbers); ``jacobian_msv`` (same
    arguments) -> (points, L) mean squared singular value of each layer's Jacobian at
    the first ``jacobian_inputs`` inputs."""
    n, depth, batch = config["width"], config["depth"], config["batch"]
    net = jgrad.nn.mlp(
        depth, n, activation="tanh", weight_var=1.0, bias_var=1.0, stacked=True
    )

    def draw(key, weight_var, bias_var, q_star):
        k_net, k_x, k_g = jax.random.split(key, 3)
        _, unit = net.init(k_net, (n,))
        # z^1 = W^1 x + b^1 has variance weight_var E[x^2] + bias_var = q*
        x_std = jnp.sqrt((q_star - bias_var) / weight_var)
        x = x_std[..., None, None] * jax.random.normal(k_x, (batch, n), jnp.float64)
        g = jax.random.normal(k_g, (batch, n), jnp.float64)
        return unit, x, g

    @jax.jit
    def grads(key, weight_vars, bias_var, q_stars):
        unit, xs, g = draw(key, weight_vars, bias_var, q_stars)

        def at(point):
            weight_var, x = point
            params = _scaled(unit, weight_var, bias_var)
            loss = lambda y: jnp.sum(y * g)  # noqa: E731
            flow = jgrad.analyze.layer_grad_norms(net, params, x, loss)
            # entries: 0 the input, 1 dense, 2 h^1, 3.. the repeated blocks' h^2..h^L
            return 2 * jnp.log(10.0) * flow.log10_norm[2:] - jnp.log(batch)

        return jax.lax.map(at, (weight_vars, xs))

    @jax.jit
    def jacobian_msv(key, weight_vars, bias_var, q_stars):
        unit, xs, _ = draw(key, weight_vars, bias_var, q_stars)

        def at(point):
            weight_var, x = point
            params = _scaled(unit, weight_var, bias_var)

            def msv(x1):
                mats = jgrad.analyze.layer_jacobians(net, params, x1).stacked()
                return jnp.sum(mats**2, axis=(1, 2)) / n

            return jnp.mean(jax.lax.map(msv, x[: config["jacobian_inputs"]]), axis=0)

        return jax.lax.map(at, (weight_vars, xs))

    return grads, jacobian_msv


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    bias_var = config["bias_var"]
    layers = np.arange(1, config["depth"] + 1)
    names = list(config["points"])
    with jax.enable_x64():
        grads, jacobian_msv = _measure(config)
        critical = float(jgrad.theory.critical_weight_var("tanh", bias_var))
        weight_vars = np.array(
            [critical if w is None else w for w in config["points"].values()]
        )
        mf = jgrad.theory.mean_field(
            "tanh", jnp.asarray(weight_vars), jnp.float64(bias_var)
        )
        q_stars, chi1 = np.asarray(mf.q_star), np.asarray(mf.chi1)
        logs = np.array(
            [
                grads(jax.random.fold_in(key, s), weight_vars, bias_var, q_stars)
                for s in range(config["seeds"])
            ]
        )  # (seeds, points, L)
        jac = np.asarray(jacobian_msv(key, weight_vars, bias_var, q_stars))
        for i, name in enumerate(names):
            # growth toward the input: minus the slope of ln E||dL/dh^l||^2 against l
            slopes = -np.polyfit(layers, logs[:, i].T, 1)[0]
            se = slopes.std(ddof=1) / np.sqrt(len(slopes)) if len(slopes) > 1 else 0
            numbers[f"{name}_log_growth"] = float(slopes.mean())
            numbers[f"{name}_log_growth_se"] = float(se)
            numbers[f"{name}_ln_chi1"] = float(np.log(chi1[i]))
            numbers[f"{name}_weight_var"] = float(weight_vars[i])
            numbers[f"{name}_q_star"] = float(q_stars[i])
            numbers[f"{name}_layer_jacobian_msv"] = float(np.mean(jac[i]))
            arrays[f"{name}_log_grad_sq"] = logs[:, i].mean(0)
            arrays[f"{name}_slopes"] = slopes
        bias = np.concatenate([[1e-4, 0.002, 0.005], np.linspace(0.01, 0.3, 30)])
        arrays["critical_line_bias_var"] = bias
        arrays["critical_line_weight_var"] = np.asarray(
            jgrad.theory.critical_weight_var("tanh", jnp.asarray(bias))
        )
    arrays["layers"] = layers
    numbers["width"] = config["width"]
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    a, nums = result.arrays, result.numbers
    layers = np.asarray(a["layers"])
    depth = layers[-1]
    fig, axes = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    ax = axes[0]
    for name, color in COLORS.items():
        logs = np.asarray(a[f"{name}_log_grad_sq"])
        rel = np.exp(logs - logs[-1])  # E||dL/dh^l||^2 / E||dL/dh^L||^2
        ln_chi1 = nums[f"{name}_ln_chi1"]
        ax.semilogy(
            layers,
            rel,
            "o",
            ms=3.5,
            color=color,
            label=f"{name} ({nums[f'{name}_weight_var']:.4g}, 0.05): "
            f"measured {nums[f'{name}_log_growth']:+.4f}/layer",
        )
        ax.semilogy(
            layers,
            np.exp(ln_chi1 * (depth - layers)),
            "-",
            lw=1.2,
            color=color,
            label=rf"theory $\chi_1^{{L-l}}$, $\ln\chi_1$ = {ln_chi1:+.4f}",
        )
    ax.set_xlabel("layer l (L = output)")
    ax.set_ylabel(
        r"$E\|\partial L/\partial h^l\|^2\ /\ E\|\partial L/\partial h^L\|^2$"
    )
    ax.set_title(f"gradient norm against depth, tanh, width {_width(result)}")
    ax.legend(frameon=False, fontsize=7.5)
    ax = axes[1]
    ax.plot(
        a["critical_line_weight_var"],
        a["critical_line_bias_var"],
        "k-",
        label=r"critical line $\chi_1 = 1$",
    )
    for name, color in COLORS.items():
        ax.plot(nums[f"{name}_weight_var"], 0.05, "o", ms=8, color=color, label=name)
    ax.text(1.2, 0.22, "ordered\n(vanishing)", ha="left")
    ax.text(2.75, 0.26, "chaotic\n(exploding)", ha="center")
    ax.set_xlim(1.0, 3.0)
    ax.set_xlabel(r"$\sigma_w^2$")
    ax.set_ylabel(r"$\sigma_b^2$")
    ax.set_title("order-chaos phase diagram (tanh)")
    ax.legend(frameon=False, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.2))
    fig.suptitle(
        r"Schoenholz et al. 2017: the squared gradient changes by $\chi_1$ per layer"
    )
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _width(result: Result) -> str:
    return f"{result.numbers['width']:.0f}"
