"""C6. Yang et al. 2019: batch norm makes gradients explode at a fixed rate per layer.

Paper: G. Yang, J. Pennington, V. Rao, J. Sohl-Dickstein, S. S. Schoenholz, "A Mean Field
Theory of Batch Normalization", ICLR 2019, arXiv:1902.08129.

Reproduced: the main claim of the abstract (a deep fully connected network with batch
norm after every layer has gradients that explode exponentially with depth at
initialization, at a rate no choice of weight variance or activation removes, smallest
near the linear regime) and its per-layer factor of the squared gradient norm:
``(B - 2) / (B - 3)`` for the identity at batch size B and ``pi / (pi - 1) = 1.466942``
for ReLU as B -> infinity (``jgrad.theory.batch_norm_grad_growth``).

Setup: ``jgrad.nn.mlp(30, 512, norm="batch")`` (dense -> batch norm, scale 1 and offset
0 as initialized, eps 1e-5 -> activation; weight_var 1, which batch norm makes
irrelevant), a batch of B unit Gaussian inputs, a Gaussian cotangent at the top (L =
sum(y * g)), 3 seeds (2 with --quick). Measured with
``jgrad.analyze.layer_grad_norms(..., train=True)`` (batch norm's backward pass over the
batch, the exact batch Jacobian's): the per-layer factor is ``exp(-slope)`` of ``ln
||dL/dh^l||^2`` against l over the middle layers (3 dropped at each end), the slope
averaged over seeds. Cases: linear at B = 8 and 16, ReLU at B = 32 and 128.

Command: ``jgrad repro c6`` (``--quick`` for 2 seeds). CPU time: about 30 s (quick 30 s).

Expected (tolerances at about three standard errors of the prototype runs;
``../shared/research/papers.md``):

- linear_B8: 1.2 +- 2% [num]
- linear_B16: 1.07692 +- 2% [num]
- relu_B128: 1.46694 +- 1.5% [num]
- relu_B32: >= 1.46694 [num]

(B - 2) / (B - 3) is exact for the identity: batch norm's backward pass projects out the
batch mean and the normalized output (a factor (B - 2) / (B - 1)) and divides by the
batch standard deviation, whose inverse square has mean (B - 1) / (B - 3). The ReLU factor
is E[phi'(z)^2] / Var[phi(z)] at z ~ N(0, 1); at finite B it is larger (B = 32 exceeds
it), so B = 128 is compared with the limit. The attribution of these closed forms to a
numbered result of the paper is from memory; both were derived and simulated for
papers.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.experiments import Result

CORE = True
CASES = {  # name: (activation, batch size B)
    "linear_B8": ("linear", 8),
    "linear_B16": ("linear", 16),
    "relu_B32": ("relu", 32),
    "relu_B128": ("relu", 128),
}


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "depth": 30,
        "width": 512,
        "trim": 3,
        "seeds": 2 if quick else (6 if full else 3),
    }


def _log_sq_norms(activation: str, batch: int, config: dict, key) -> np.ndarray:
    """ln ||dL/dh^l||^2 for l = 1..depth (the block outputs) of one network."""
    net = jgrad.nn.mlp(
        config["depth"], config["width"], activation=activation, norm="batch"
    )
    k_net, k_x, k_g = jax.random.split(key, 3)
    _, params = net.init(k_net, (config["width"],))
    x = jax.random.normal(k_x, (batch, config["width"]))
    g = jax.random.normal(k_g, (batch, config["width"]))
    flow = jgrad.analyze.layer_grad_norms(
        net, params, x, lambda y: jnp.sum(y * g), train=True
    )
    log10 = np.asarray(flow.log10_norm, np.float64)[list(net.block_ends)]
    return 2 * np.log(10) * log10


def run(config: dict, key) -> Result:
    numbers, arrays = {}, {}
    t = config["trim"]
    for i, (name, (activation, batch)) in enumerate(CASES.items()):
        curves, slopes = [], []
        for s in range(config["seeds"]):
            ln = _log_sq_norms(
                activation, batch, config, jax.random.fold_in(key, 100 * i + s)
            )
            layers = np.arange(1, len(ln) + 1)
            mid = slice(t, len(ln) - t)
            slopes.append(np.polyfit(layers[mid], ln[mid], 1)[0])
            curves.append(ln - ln[-1])
        numbers[name] = float(np.exp(-np.mean(slopes)))
        numbers[f"{name}_sem"] = float(
            numbers[name] * np.std(slopes, ddof=1) / np.sqrt(len(slopes))
        )
        theory_b = batch if activation == "linear" else None
        numbers[f"{name}_theory"] = jgrad.theory.batch_norm_grad_growth(
            activation, theory_b
        )
        arrays[f"{name}_log_sq_norm"] = np.mean(curves, 0)
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    colors = dict(zip(CASES, ("#56B4E9", "#0072B2", "#E69F00", "#D55E00")))
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    for name, (activation, batch) in CASES.items():
        ln = result.arrays[f"{name}_log_sq_norm"]
        layers = np.arange(1, len(ln) + 1)
        rate = result.numbers[name]
        theory = result.numbers[f"{name}_theory"]
        ax.semilogy(
            layers,
            np.exp(ln),
            "o",
            ms=3.5,
            color=colors[name],
            label=f"{activation}, B = {batch}: measured {rate:.4f}/layer",
        )
        if name == "relu_B32":
            continue  # the same B -> infinity line as B = 128
        lim = "" if activation == "linear" else r" ($B\to\infty$)"
        ax.semilogy(
            layers,
            theory ** (layers[-1] - layers),
            "--",
            lw=1,
            color=colors[name],
            label=f"theory {theory:.4f}/layer{lim}",
        )
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\|\partial L/\partial h^l\|^2$ / value at the top layer")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Yang et al. 2019: batch norm, 30 x 512, gradient explosion at init")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
