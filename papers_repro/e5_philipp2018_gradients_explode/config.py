"""E5. Philipp et al. 2018 and Yang et al. 2019: batch norm and SELU MLPs explode, ResNets
reduce it.

Paper: G. Philipp, D. Song, J. G. Carbonell, "Gradients explode - Deep Networks are
shallow - ResNet explained", arXiv:1712.05577 (2018; later "The exploding gradient
problem demystified"); with the large-batch rate of G. Yang, J. Pennington, V. Rao,
J. Sohl-Dickstein, S. S. Schoenholz, "A Mean Field Theory of Batch Normalization", ICLR
2019, arXiv:1902.08129.

Reproduced: Philipp et al.'s abstract (exploding gradients exist in MLPs thought to be
immune, with batch norm and with SELU, and ResNets reduce them), with the per-layer
factors of the squared gradient norm at initialization: BN-ReLU ``pi / (pi - 1) =
1.466942`` for a large batch (``jgrad.theory.batch_norm_grad_growth("relu")``), SELU at
its fixed point ``E[selu'(z)^2] = 1.0715750`` (ln = 0.0691 per layer), and the same
BN-ReLU stack with identity skips well below either.

Setup: width 512, a batch of B unit Gaussian inputs, a Gaussian cotangent at the top (L =
sum(y * g)), 3 seeds (1 with --quick). Plain BN-ReLU: ``jgrad.nn.mlp(30, 512,
activation="relu", norm="batch")`` (dense -> batch norm without affine part -> ReLU,
weight_var 1), B = 256 (128 with --quick). ResNet: ``mlp(..., residual=True)``, the same
dense, batch norm and ReLU as pre-activation branches ``x + dense(relu(BN(x)))``
(weight_var 1), B = 128. SELU: ``mlp(40, 512, activation="selu", init="lecun_normal")``,
zero biases, no normalization, B = 128. Measured with
``jgrad.analyze.layer_grad_norms`` (``train=True`` where batch norm couples the batch):
the per-layer factor is ``exp(-slope)`` of ``ln ||dL/dx^l||^2`` against l over the middle
layers (3 dropped at each end), the slope averaged over seeds.

Command: ``jgrad repro e5`` (``--quick``: one seed, B = 128 for BN-ReLU). CPU time:
about 55 s (quick 34 s) on the shared 2-core machine.

Expected (``../shared/research/papers.md`` C6, E1(c), E5; the ResNet bound calibrated
with 6 prototype seeds, see below):

- bn_relu_factor: 1.46694 +- 1.5% [num]
- selu_log_growth: 0.0691 +- 0.02 [num]
- resnet_factor: <= 1.1 [num]

pi / (pi - 1) is ``E[relu'(z)^2] / Var[relu(z)]`` at z ~ N(0, 1), the B -> infinity
limit (B = 256 measured 1.4588 +- 0.0012 over 6 prototype seeds, within 0.6%). The SELU
factor is ``lambda^2 (1/2 + alpha^2 e^2 Phi(-2))``, computed here in closed form:
``jgrad.theory.chi1("selu", 1, 0)`` gives 1.0676 because Gauss-Hermite converges slowly
on SELU's discontinuous derivative (reported as ``selu_factor_quadrature``). The ResNet
factor is not constant: batch norm divides each branch's backward signal by the batch
standard deviation of x^l, which grows as ``1 + l Var[relu(z)]``, so the mean-field
squared gradient grows as a power of depth, ``prod_k (1 + r / (k + c))`` with ``r = pi /
(pi - 1)`` and ``c = 2 pi / (pi - 1)`` (derived here, reported as
``resnet_factor_theory``, 1.090 on the same fitting window). The 1.1 bound is papers.md's;
6 prototype seeds gave 1.0978 +- 0.0004 (mean + 3 standard errors 1.0990); with He
branches (weight_var 2) the same fit gives 1.110.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = False
SELU_ALPHA = 1.6732632423543778  # Klambauer et al. 2017's alpha_01, lambda_01 (E1)
SELU_LAMBDA = 1.0507009873554807
CASES = {  # name: (mlp keyword arguments, depth, batch size B, train mode)
    "bn_relu": (dict(activation="relu", norm="batch"), 30, None, True),  # config's B
    "resnet": (dict(activation="relu", norm="batch", residual=True), 30, 128, True),
    "selu": (dict(activation="selu", init="lecun_normal"), 40, 128, False),
}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "width": 512,
        "trim": 3,
        "seeds": 1 if quick else (6 if full else 3),
        "bn_relu_batch": 128 if quick else 256,
    }


def _log_sq_norms(name: str, config: dict, key) -> np.ndarray:
    """ln ||dL/dx^l||^2 for l = 1..depth (the block outputs) of one network."""
    kwargs, depth, batch, train = CASES[name]
    if name == "bn_relu":
        batch = config["bn_relu_batch"]
    n = config["width"]
    net = jgrad.nn.mlp(depth, n, **kwargs)
    k_net, k_x, k_g = jax.random.split(key, 3)
    _, params = net.init(k_net, (n,))
    x = jax.random.normal(k_x, (batch, n))
    g = jax.random.normal(k_g, (batch, n))
    flow = jgrad.analyze.layer_grad_norms(
        net, params, x, lambda y: jnp.sum(y * g), train=train
    )
    log10 = np.asarray(flow.log10_norm, np.float64)[list(net.block_ends)]
    return 2 * math.log(10) * log10


def _slope(ln: np.ndarray, trim: int) -> float:
    layers = np.arange(1, len(ln) + 1)
    mid = slice(trim, len(ln) - trim)
    return float(np.polyfit(layers[mid], ln[mid], 1)[0])


def _resnet_theory(depth: int) -> np.ndarray:
    """Mean-field ln ||dL/dx^l||^2 - ln ||dL/dx^depth||^2, l = 1..depth, of the
    pre-activation BN-ReLU ResNet with weight_var 1 and unit-variance inputs: block k + 1
    multiplies the squared gradient by ``1 + r / (k + c)`` (see the module docstring)."""
    r = jgrad.theory.batch_norm_grad_growth("relu")
    c = 2 * math.pi / (math.pi - 1)
    ln_factor = np.log1p(r / (np.arange(depth) + c))
    return np.array([ln_factor[k:].sum() for k in range(1, depth + 1)])


def _selu_factor() -> float:
    """``E[selu'(z)^2]``, z ~ N(0, 1), in closed form: ``lambda^2 (1/2 + alpha^2 e^2
    Phi(-2))`` (``E[e^(2z); z < 0] = e^2 Phi(-2)``)."""
    lam, alpha = SELU_LAMBDA, SELU_ALPHA
    phi = 0.5 * math.erfc(2 / math.sqrt(2))
    return lam**2 * (0.5 + alpha**2 * math.exp(2) * phi)


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    t = config["trim"]
    for i, name in enumerate(CASES):
        curves, slopes = [], []
        for s in range(config["seeds"]):
            ln = _log_sq_norms(name, config, jax.random.fold_in(key, 100 * i + s))
            slopes.append(_slope(ln, t))
            curves.append(ln - ln[-1])
        slope = float(np.mean(slopes))
        sem = (
            float(np.std(slopes, ddof=1) / np.sqrt(len(slopes)))
            if len(slopes) > 1
            else 0.0
        )
        arrays[f"{name}_log_sq_norm"] = np.mean(curves, 0)
        if name == "selu":
            numbers["selu_log_growth"] = -slope
            numbers["selu_log_growth_sem"] = sem
            numbers["selu_factor"] = math.exp(-slope)
        else:
            numbers[f"{name}_factor"] = math.exp(-slope)
            numbers[f"{name}_factor_sem"] = math.exp(-slope) * sem
    numbers["bn_relu_factor_theory"] = jgrad.theory.batch_norm_grad_growth("relu")
    numbers["selu_factor_theory"] = _selu_factor()
    with jax.enable_x64():
        numbers["selu_factor_quadrature"] = float(jgrad.theory.chi1("selu", 1.0, 0.0))
    theory = _resnet_theory(CASES["resnet"][1])
    arrays["resnet_theory_log_sq_norm"] = theory
    numbers["resnet_factor_theory"] = math.exp(-_slope(theory, t))
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    n = result.numbers
    styles = {
        "bn_relu": ("#D55E00", "BN-ReLU MLP", n["bn_relu_factor_theory"], "pi/(pi-1)"),
        "selu": ("#0072B2", "SELU MLP", n["selu_factor_theory"], "E[selu'^2]"),
        "resnet": ("#009E73", "BN-ReLU ResNet (identity skips)", None, None),
    }
    fig, ax = plt.subplots(figsize=(6.6, 4.6), constrained_layout=True)
    for name, (color, label, theory, tname) in styles.items():
        ln = np.asarray(result.arrays[f"{name}_log_sq_norm"])
        layers = np.arange(1, len(ln) + 1)
        key = "selu_factor" if name == "selu" else f"{name}_factor"
        ax.semilogy(
            layers,
            np.exp(ln),
            "o",
            ms=3.5,
            color=color,
            label=f"{label}: {n[key]:.4f}/layer",
        )
        if theory is not None:
            ax.semilogy(
                layers,
                theory ** (layers[-1] - layers),
                "--",
                lw=1,
                color=color,
                label=f"{tname} = {theory:.4f}/layer",
            )
    th = np.asarray(result.arrays["resnet_theory_log_sq_norm"])
    ax.semilogy(
        np.arange(1, len(th) + 1),
        np.exp(th),
        "--",
        lw=1,
        color="#009E73",
        label="mean field prod(1 + r/(k + c)) (power law)",
    )
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\|\partial L/\partial x^l\|^2$ / value at the top layer")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Philipp et al. 2018: BN and SELU MLPs explode, ResNets much less")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
