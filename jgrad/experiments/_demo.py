"""``jgrad demo``: per-layer gradient norms of deep MLPs, the causes and cures side by side.

For MLPs of ``depth`` hidden layers of ``width`` units (50 and 256 by default) it measures
||dL/dh_l|| for l = 1..depth (h_l the output of hidden block l) under six textbook
configurations, in log space so that a gradient below float32's range is still reported,
and flags where the plain float32 gradient underflowed to zero.

Loss: ``L = mean_b 0.5 ||y_b - t_b||^2`` on a batch of standard-normal inputs x_b and
standard-normal targets t_b, both drawn from ``seed``; the same data for every network.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import _checks, analyze, nn
from jgrad.experiments._io import provenance, save_figure, save_json

__all__ = [
    "DemoConfig",
    "DEMO_NETS",
    "run_demo",
    "format_table",
    "plot_demo",
    "write_demo",
]


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """One network of the demo: a label and the ``jgrad.nn.mlp`` arguments."""

    label: str
    activation: str
    init: str
    weight_var: float | None = None
    expect: str = "stable"  # what the textbooks predict: vanishing, exploding or stable


#: The six configurations: three causes (saturating sigmoid with the "standard" init, ReLU
#: with Glorot's variance, tanh in the chaotic phase) and the cures (He init for ReLU,
#: Glorot and orthogonal init for tanh).
DEMO_NETS = (
    NetSpec("sigmoid+standard", "sigmoid", "standard_uniform", expect="vanishing"),
    NetSpec("tanh+glorot", "tanh", "glorot_normal"),
    NetSpec("relu+glorot", "relu", "glorot_normal", expect="vanishing"),
    NetSpec("relu+he", "relu", "he_normal"),
    NetSpec("tanh+orthogonal", "tanh", "orthogonal"),
    NetSpec("tanh+gauss(wv=4)", "tanh", "gaussian", 4.0, expect="exploding"),
)

#: Bounds on the first/last gradient-norm ratio used to label a network.
STABLE_BAND = (0.05, 20.0)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (the defaults are the documented run).

    Attributes:
        depth: hidden layers.
        width: their width (also the input size).
        batch: examples in the loss.
        seed: seeds the data and every network's init.
    """

    depth: int = 50
    width: int = 256
    batch: int = 64
    seed: int = 0

    def __post_init__(self):
        _checks.positive_int("depth", self.depth)
        _checks.positive_int("width", self.width)
        _checks.positive_int("batch", self.batch)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {self.seed!r}.")


def _verdict(log10_ratio: float) -> str:
    lo, hi = np.log10(STABLE_BAND[0]), np.log10(STABLE_BAND[1])
    if not np.isfinite(log10_ratio):
        return "non-finite"
    return (
        "vanishing"
        if log10_ratio < lo
        else "exploding"
        if log10_ratio > hi
        else "stable"
    )


def run_demo(
    config: DemoConfig = DemoConfig(), progress: bool = False
) -> dict[str, Any]:
    """Runs the demo; pure compute, no files.

    Returns:
        A dict with ``config``, ``provenance`` and ``nets``: for each network its spec,
        ``log10_norm`` (depth,) for h_1..h_depth, ``log10_ratio`` = log10 of
        ||dL/dh_1|| / ||dL/dh_depth||, ``verdict`` (vanishing/stable/exploding by
        :data:`STABLE_BAND`; ``expect`` is the textbook prediction),
        ``underflow_layers`` (1-based layers whose plain float32 gradient is exactly zero),
        ``nonfinite_layers`` (forward activations not finite), ``loss`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    key = jax.random.key(config.seed)
    k_init, k_x, k_t = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (config.batch, config.width))
    t = jax.random.normal(k_t, (config.batch, config.width))

    def loss_fn(y):
        return 0.5 * jnp.mean(jnp.sum(jnp.square(y - t), axis=-1))

    nets = []
    for spec in tqdm(DEMO_NETS, desc="jgrad demo", disable=not progress):
        start = time.perf_counter()
        net = nn.mlp(
            config.depth,
            config.width,
            activation=spec.activation,
            init=spec.init,
            weight_var=spec.weight_var,
        )
        _, params = net.init(k_init, (config.width,))
        # Eager on purpose: each network runs once, and compiling its 100-layer backward
        # pass costs ~4 s on 2 CPU cores against ~0.2 s to run it op by op.
        flow = analyze.layer_grad_norms(net, params, x, loss_fn)
        flow = jax.tree.map(np.asarray, flow)
        # GradFlow index k is the output of layer k (0 = input); block l ends at layer e_l.
        idx = np.asarray(net.block_ends) + 1
        log10_norm = flow.log10_norm[idx]
        ratio = float(log10_norm[0] - log10_norm[-1])
        nets.append(
            {
                **dataclasses.asdict(spec),
                "log10_norm": log10_norm,
                "log10_ratio": ratio,
                "verdict": _verdict(ratio),
                "underflow_layers": (np.nonzero(flow.underflow[idx])[0] + 1).tolist(),
                "nonfinite_layers": (
                    np.nonzero(~flow.forward_finite[idx])[0] + 1
                ).tolist(),
                "loss": float(flow.loss),
                "seconds": time.perf_counter() - start,
            }
        )
    return {
        "config": dataclasses.asdict(config),
        "loss": "mean_b 0.5 ||y_b - t_b||^2, x_b and t_b standard normal",
        "norm": "log10 of the Frobenius norm of dL/dh_l over the batch",
        "stable_band": STABLE_BAND,
        "provenance": provenance(config.seed),
        "nets": nets,
    }


def format_table(result: dict[str, Any], every: int = 1) -> str:
    """The per-layer table (log10 ||dL/dh_l||, one column per network) and a summary."""
    nets = result["nets"]
    depth = result["config"]["depth"]
    w = max(10, *(len(n["label"]) for n in nets))
    names = [n["label"] for n in nets]
    lines = [
        "log10 ||dL/dh_l|| (computed in log space; * = the plain float32 gradient is 0)"
    ]
    lines.append("layer " + "".join(f"{nm:>{w + 2}}" for nm in names))
    for layer in range(1, depth + 1):
        if (layer - 1) % every and layer != depth:
            continue
        cells = []
        for n in nets:
            v = n["log10_norm"][layer - 1]
            mark = "*" if layer in n["underflow_layers"] else " "
            cells.append(f"{v:>{w + 1}.2f}{mark}")
        lines.append(f"{layer:>5} " + "".join(cells))
    lines.append("")
    lines.append(
        f"{'network':<{w}}  {'log10 first/last':>16}  {'first/last':>10}  {'verdict':<10} "
        "plain float32 gradient"
    )
    for n in nets:
        r = n["log10_ratio"]
        under = n["underflow_layers"]
        note = (
            f"underflows to 0 at {len(under)} layers (1..{max(under)})"
            if under
            else "finite"
        )
        if n["nonfinite_layers"]:
            note += f"; forward non-finite from layer {n['nonfinite_layers'][0]}"
        lines.append(
            f"{n['label']:<{w}}  {r:>16.2f}  {_fmt_ratio(r):>10}  {n['verdict']:<10} {note}"
        )
    return "\n".join(lines)


def _fmt_ratio(log10_ratio: float) -> str:
    if not np.isfinite(log10_ratio):
        return str(log10_ratio)
    m = 10.0 ** (log10_ratio - np.floor(log10_ratio))
    return f"{m:.2f}e{int(np.floor(log10_ratio)):+03d}"


#: Okabe & Ito's colour-blind-safe palette (yellow and black left out: too faint on white,
#: too close to the text). Causes
#: take the warm colours and are dashed; cures take the cool ones and are solid.
CAUSE_COLORS = ("#d55e00", "#e69f00", "#cc79a7")
CURE_COLORS = ("#0072b2", "#009e73", "#56b4e9")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_FONT = 11  # points; tick and legend labels use _FONT - 1

#: A curve gets its own panel when its largest |log10 ratio to the last layer| exceeds this
#: many times that of every other curve (and of the stable band).
SPLIT_FACTOR = 3.0


def _relative_curves(result: dict[str, Any]) -> list[np.ndarray]:
    """log10 ||dL/dh_l|| - log10 ||dL/dh_depth|| per network (NaN where not finite)."""
    curves = []
    for n in result["nets"]:
        g = np.asarray(n["log10_norm"], dtype=np.float64)
        rel = g - g[-1] if np.isfinite(g[-1]) else np.full_like(g, np.nan)
        curves.append(np.where(np.isfinite(rel), rel, np.nan))
    return curves


def split_panels(curves: list[np.ndarray], band: tuple[float, float]) -> list[int]:
    """Indices of the curves that would flatten the rest on a shared axis.

    Sorted by extent (largest ``|value|``), the curves before the first extent that
    exceeds :data:`SPLIT_FACTOR` times the next one (and the band's half-width) go to a
    panel of their own; the rest share the main panel. Empty when nothing dominates.
    """
    half = max(abs(np.log10(band[0])), abs(np.log10(band[1])))
    ext = [float(np.nanmax(np.abs(c))) if np.isfinite(c).any() else 0.0 for c in curves]
    order = sorted(range(len(curves)), key=lambda i: -ext[i])
    for k in range(len(order) - 1):
        if ext[order[k]] > SPLIT_FACTOR * max(ext[order[k + 1]], half):
            return sorted(order[: k + 1])
    return []


def plot_demo(result: dict[str, Any]):
    """A figure of the gradient norm per layer relative to the last layer, for a paper.

    The y axis is ``log10 ||dL/dh_l|| / ||dL/dh_depth||``, so layer 1 reads off the ratio
    the verdict uses, and the verdict's stable band is shaded. Causes (networks the
    textbooks expect to vanish or explode) are dashed in warm colours, cures solid in cool
    ones, from Okabe and Ito's colour-blind-safe palette; x marks a layer whose plain
    float32 gradient is exactly 0. A curve whose range would flatten the others (sigmoid
    with the standard init at the default depth; see :func:`split_panels`) is drawn in a
    second panel with its own scale. Layer ticks are integers; text is at least 10 pt.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    nets = result["nets"]
    band = tuple(result.get("stable_band", STABLE_BAND))
    lo, hi = float(np.log10(band[0])), float(np.log10(band[1]))
    curves = _relative_curves(result)
    wide = split_panels(curves, band)
    depth = result["config"]["depth"]
    layers = np.arange(1, depth + 1)

    if wide:
        fig, axes = plt.subplots(
            1, 2, figsize=(10, 5.4), layout="constrained", width_ratios=(2, 1)
        )
    else:
        fig, ax = plt.subplots(figsize=(7.5, 5.4), layout="constrained")
        axes = [ax]
    n_cause = n_cure = 0
    step = max(1, depth // 8)
    handles = {"cause": [], "cure": []}
    for i, (n, rel) in enumerate(zip(nets, curves, strict=True)):
        cause = n.get("expect", "stable") != "stable"
        if cause:
            color, style = CAUSE_COLORS[n_cause % len(CAUSE_COLORS)], "--"
            n_cause += 1
        else:
            color, style = CURE_COLORS[n_cure % len(CURE_COLORS)], "-"
            n_cure += 1
        ax = axes[1] if i in wide else axes[0]
        label = n["label"] if np.isfinite(rel).any() else f"{n['label']} (non-finite)"
        (line,) = ax.plot(
            layers,
            rel,
            linestyle=style,
            color=color,
            linewidth=2,
            marker=_MARKERS[i % len(_MARKERS)],
            markevery=(i * step // len(nets), step),  # staggered: overlaps stay visible
            markersize=6,
            label=label,
        )
        if n["underflow_layers"]:
            u = np.asarray(n["underflow_layers"])
            ax.plot(u, rel[u - 1], "x", color=color, markersize=8, markeredgewidth=2)
        handles["cause" if cause else "cure"].append(line)

    for ax in axes:
        ax.axhspan(lo, hi, color="0.85", zorder=0, label="stable band")
        ax.text(
            0.01,
            lo,
            " stable band",
            transform=ax.get_yaxis_transform(),
            va="bottom",
            ha="left",
            fontsize=_FONT - 1,
            color="0.3",
        )
        ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, depth + 0.5)
        ax.set_xlabel("layer $l$", fontsize=_FONT)
        ax.tick_params(labelsize=_FONT - 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(
        r"$\log_{10}\, \|\partial L/\partial h_l\| \,/\, \|\partial L/\partial h_{"
        + str(depth)
        + r"}\|$",
        fontsize=_FONT,
    )
    if wide:
        axes[0].set_title("other networks", fontsize=_FONT)
        axes[1].set_title(
            ", ".join(nets[i]["label"] for i in wide) + " (own scale)", fontsize=_FONT
        )
    c = result["config"]
    fig.suptitle(
        f"Gradient norm per layer relative to the last, depth {c['depth']}, "
        f"width {c['width']}, seed {c['seed']}",
        fontsize=_FONT + 1,
    )

    # Legend: causes in one column, cures in the other, then the band and the x marks.
    blank = Line2D([], [], linestyle="none", marker="none")
    rows = max(len(handles["cause"]), len(handles["cure"]))
    col = {}
    for kind in ("cause", "cure"):
        col[kind] = handles[kind] + [blank] * (rows - len(handles[kind]))
    band_patch = Patch(
        facecolor="0.85", label=f"stable band: first/last in [{band[0]:g}, {band[1]:g}]"
    )
    under = Line2D(
        [], [], linestyle="none", marker="x", color="0.2", markersize=8,
        markeredgewidth=2, label="plain float32 gradient is 0",
    )  # fmt: skip
    any_under = any(n["underflow_layers"] for n in nets)
    entries = (
        [Line2D([], [], linestyle="none", label="causes (dashed)")]
        + col["cause"]
        + [band_patch]
        + [Line2D([], [], linestyle="none", label="cures (solid)")]
        + col["cure"]
        + [under if any_under else blank]
    )
    labels = [h.get_label() if h is not blank else "" for h in entries]
    fig.legend(
        entries,
        labels,
        loc="outside lower center",
        ncol=2,
        fontsize=_FONT - 1,
        frameon=False,
        handlelength=3,
    )
    return fig


def write_demo(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Writes ``demo.json``, ``demo.png`` and ``demo.pdf`` (vector, fonts embedded as
    TrueType) into ``out``, each atomically; returns their paths by kind."""
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = {"json": save_json(result, out / "demo.json")}
    fig = plot_demo(result)
    try:
        paths["png"] = save_figure(fig, out / "demo.png", dpi=150)
        with plt.rc_context({"pdf.fonttype": 42}):
            paths["pdf"] = save_figure(
                fig, out / "demo.pdf", metadata={"CreationDate": None}
            )
    finally:
        plt.close(fig)
    return paths
