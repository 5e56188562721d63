"""The job behind ``jgrad sweep``: a measured phase diagram beside mean-field theory.

A :class:`SweepConfig` (plain data, saved as ``config.json``) names the activation, the
(weight_var, bias_var) grid, the network and the seeds; :func:`run_sweep` runs
``jgrad.theory.phase_diagram`` (one compiled program, chunked, sharded over every
device; on a cluster every host runs the same command after
``jax.distributed.initialize``) and writes, atomically, ``config.json``, ``sweep.json``
(summary), ``sweep.npz`` (every array) and two figures: ``phase.png`` (measured and
predicted log10 chi_1 over bias_var x weight_var, diverging colours centred at chi_1 = 1,
the predicted critical line drawn over both) and ``depth_scales.png`` (along the slice
at the middle bias_var: the measured gradient depth scale 1/|ln chi_1| against the
predicted one and xi_c, and the measured q^L against q*).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jgrad.experiments._io import atomic_write, provenance, save_figure, save_json

__all__ = ["SweepConfig", "add_sweep", "plot_depth_scales", "plot_phase", "run_sweep"]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Every setting of a ``jgrad sweep`` run (defaults as the command's).

    ``weight_var`` and ``bias_var`` are ``(min, max, n)``: n evenly spaced values from
    min to max (both included)."""

    activation: str = "tanh"
    weight_var: tuple[float, float, int] = (0.5, 4.0, 24)
    bias_var: tuple[float, float, int] = (0.0, 0.3, 16)
    depth: int = 30
    width: int = 64
    seeds: int = 2
    n_inputs: int = 8
    chunk_size: int | None = None
    seed: int = 0

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The (weight_vars, bias_vars) the ranges spell out."""
        return (
            np.linspace(*self.weight_var[:2], int(self.weight_var[2])),
            np.linspace(*self.bias_var[:2], int(self.bias_var[2])),
        )


def _crossings(x: np.ndarray, y: np.ndarray) -> float:
    """The first x where y (log chi_1) crosses 0, linearly interpolated; NaN if none."""
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    for i in range(len(x) - 1):
        if y[i] == 0:
            return float(x[i])
        if y[i] * y[i + 1] < 0:
            return float(x[i] - y[i] * (x[i + 1] - x[i]) / (y[i + 1] - y[i]))
    return float("nan")


def _summary(config: SweepConfig, d, critical: np.ndarray, seconds: float) -> dict:
    with np.errstate(divide="ignore", invalid="ignore"):
        log_meas = np.log10(d.chi1)
        log_theory = np.log10(np.asarray(d.theory.chi1, np.float64))
    both = np.isfinite(log_meas) & np.isfinite(log_theory)
    measured_critical = [
        _crossings(d.weight_vars.astype(np.float64), log_meas[:, j])
        for j in range(d.bias_vars.size)
    ]
    return {
        "config": dataclasses.asdict(config),
        "grid_points": int(d.chi1.size),
        "networks": int(d.finite.size),
        "seconds": seconds,
        "grid_points_per_second": d.chi1.size / seconds,
        "nonfinite_networks": int((~d.finite).sum()),
        "nonfinite_chi1_points": int((~d.chi1_finite).sum()),
        "log10_chi1_abs_err_median": float(
            np.median(np.abs(log_meas - log_theory)[both])
        )
        if both.any()
        else float("nan"),
        "log10_chi1_abs_err_max": float(np.max(np.abs(log_meas - log_theory)[both]))
        if both.any()
        else float("nan"),
        "bias_vars": d.bias_vars,
        "critical_weight_var_predicted": critical,
        "critical_weight_var_measured": measured_critical,
        "provenance": provenance(config.seed),
    }


def run_sweep(config: SweepConfig, out: str | Path, progress: bool = True) -> dict:
    """Runs the sweep and writes its files to ``out`` (see the module docstring).

    Returns:
        The summary written to ``sweep.json`` (with the ``PhaseDiagram`` under
        ``"diagram"``, not written).

    Raises:
        ValueError: an invalid setting, naming it (from ``phase_diagram``).
    """
    import jax

    from jgrad.theory import critical_weight_var, phase_diagram

    out = Path(out)
    wv, bv = config.grid()
    t0 = time.perf_counter()
    d = phase_diagram(
        config.activation,
        wv,
        bv,
        depth=config.depth,
        width=config.width,
        seeds=config.seeds,
        key=jax.random.key(config.seed),
        n_inputs=config.n_inputs,
        chunk_size=config.chunk_size,
        progress=progress,
    )
    seconds = time.perf_counter() - t0

    def critical_at(b):
        w = critical_weight_var(config.activation, b)
        return np.broadcast_to(np.asarray(w, np.float64), b.shape)

    critical = critical_at(bv)
    line = np.linspace(bv[0], bv[-1], 200)
    summary = _summary(config, d, critical, seconds)
    if jax.process_index() == 0:  # every process holds the whole diagram; one writes
        save_json(dataclasses.asdict(config), out / "config.json")
        save_json(summary, out / "sweep.json")
        arrays = {k: v for k, v in d._asdict().items() if k != "theory"}
        arrays.update(
            {f"theory_{k}": np.asarray(v) for k, v in d.theory._asdict().items()}
        )
        atomic_write(
            out / "sweep.npz",
            lambda tmp: _savez(tmp, critical_weight_var=critical, **arrays),
        )
        plot_phase(
            d, (line, critical_at(line)), out / "phase.png", title=_title(config)
        )
        plot_depth_scales(d, out / "depth_scales.png", title=_title(config))
    return {**summary, "diagram": d}


def _savez(tmp: str, **arrays) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def _title(config: SweepConfig) -> str:
    return (
        f"{config.activation}, depth {config.depth}, width {config.width}, "
        f"{config.seeds} seed(s) x {config.n_inputs} inputs"
    )


def _edges(v: np.ndarray) -> np.ndarray:
    """Cell edges around grid values (for pcolormesh)."""
    v = np.asarray(v, np.float64)
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5]) if v[0] else np.array([-0.5, 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def plot_phase(
    d, critical: tuple[np.ndarray, np.ndarray], path: str | Path, *, title: str = ""
) -> Path:
    """Measured and predicted log10 chi_1 over (bias_var, weight_var), diverging colours
    centred at chi_1 = 1 (blue: vanishing, red: exploding; grey: non-finite), and the
    predicted critical line ``critical = (bias_vars, weight_vars)`` over both; written
    atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    with np.errstate(divide="ignore", invalid="ignore"):
        panels = [
            ("measured", np.log10(d.chi1)),
            ("mean-field theory", np.log10(np.asarray(d.theory.chi1, np.float64))),
        ]
    finite = np.concatenate([p[np.isfinite(p)] for _, p in panels])
    lim = float(np.quantile(np.abs(finite), 0.98)) if finite.size else 1.0
    lim = max(lim, 1e-3)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.6")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    xe, ye = _edges(d.bias_vars), _edges(d.weight_vars)
    for ax, (name, z) in zip(axes, panels, strict=True):
        mesh = ax.pcolormesh(
            xe, ye, np.ma.masked_invalid(z), cmap=cmap, norm=norm, shading="flat"
        )
        ok = np.isfinite(critical[1])
        ax.plot(
            critical[0][ok],
            critical[1][ok],
            color="k",
            lw=2,
            label="critical line (theory)",
        )
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        ax.set_xlabel("bias variance σ_b²")
        ax.set_ylabel("weight variance σ_w²")
        ax.set_title(f"log10 χ₁, {name}")
        ax.legend(loc="upper left", frameon=True, fontsize=8)
    fig.colorbar(mesh, ax=axes, label="log10 χ₁  (< 0 vanishing, > 0 exploding)")
    fig.suptitle(title)
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def plot_depth_scales(d, path: str | Path, *, title: str = "") -> Path:
    """Along the middle bias_var: the measured gradient depth scale 1/|ln chi_1| (from
    the per-layer decay or growth of ||dL/dz_l||^2) against the predicted 1/|ln chi_1|
    and xi_c, and the measured q^l (mean of the last five layers and the seeds) against
    q*; written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    j = d.bias_vars.size // 2
    w = d.weight_vars
    th = d.theory
    with np.errstate(divide="ignore", invalid="ignore"):
        xi_meas = 1 / np.abs(np.log(d.chi1[:, j]))
        xi_pred = 1 / np.abs(np.log(np.asarray(th.chi1, np.float64)[:, j]))
    xi_c = np.asarray(th.xi_c, np.float64)[:, j]
    depth = d.q.shape[-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    a.plot(w, xi_pred, color="k", lw=1.5, label="theory 1/|ln χ₁|")
    a.plot(w, xi_c, color="#009E73", ls="--", lw=1.5, label="theory ξ_c")
    a.plot(w, xi_meas, "o", color="#D55E00", ms=4, label="measured 1/|ln χ₁|")
    a.axhline(depth, color="0.5", lw=0.8, ls=":", label=f"network depth {depth}")
    a.set_yscale("log")
    a.set_xlabel("weight variance σ_w²")
    a.set_ylabel("depth scale (layers)")
    a.set_title(f"gradient depth scale at σ_b² = {d.bias_vars[j]:.3g}")
    a.legend(frameon=False, fontsize=8)
    last = max(1, min(5, depth // 2))
    q_meas = d.q[:, j, :, -last:].mean(axis=(-1, -2))
    q_star = np.asarray(th.q_star, np.float64)[:, j]
    b.plot(w, q_star, color="k", lw=1.5, label="theory q*")
    b.plot(
        w,
        q_meas,
        "o",
        color="#0072B2",
        ms=4,
        label=f"measured q^l, layers {depth - last + 1}-{depth}",
    )
    b.set_yscale("log")
    b.set_xlabel("weight variance σ_w²")
    b.set_ylabel("mean squared pre-activation q")
    b.set_title(f"length fixed point at σ_b² = {d.bias_vars[j]:.3g}")
    b.legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


# --- the command ------------------------------------------------------------------


def _range(
    parser: argparse.ArgumentParser, flag: str, values: list[str], positive: bool
) -> tuple[float, float, int]:
    what = "> 0" if positive else ">= 0"
    fix = f"Pass e.g. {flag} {'0.5 4.0 24' if positive else '0.0 0.3 16'}."
    try:
        lo, hi, n = float(values[0]), float(values[1]), int(values[2], 10)
    except ValueError:
        parser.error(
            f"argument {flag}: must be MIN MAX N (numbers, N an integer), "
            f"got {' '.join(values)!r}. {fix}"
        )
    bad = not (np.isfinite(lo) and np.isfinite(hi))
    if bad or (lo <= 0 if positive else lo < 0):
        parser.error(
            f"argument {flag}: MIN must be a finite number {what} (a variance), "
            f"got {values[0]!r}. {fix}"
        )
    if not hi >= lo:
        parser.error(
            f"argument {flag}: MAX must be a finite number >= MIN ({lo:g}), got "
            f"{values[1]!r}. {fix}"
        )
    if n < 1:
        parser.error(
            f"argument {flag}: N must be a positive integer (grid values), got "
            f"{values[2]!r}. {fix}"
        )
    return lo, hi, n


def _sweep(args: argparse.Namespace) -> int:
    from jgrad.cli import _make_out

    wr = _range(args.parser, "--weight-var", args.weight_var, positive=True)
    br = _range(args.parser, "--bias-var", args.bias_var, positive=False)
    from jgrad.theory._phase import _check_net

    try:  # refuse a bad network before --out is created
        _check_net(args.activation, args.depth, args.width, args.n_inputs)
    except ValueError as err:
        args.parser.error(str(err))
    _make_out(args.parser, args.out)
    config = SweepConfig(
        activation=args.activation,
        weight_var=wr,
        bias_var=br,
        depth=args.depth,
        width=args.width,
        seeds=args.seeds,
        n_inputs=args.n_inputs,
        chunk_size=args.chunk_size,
        seed=args.seed,
    )
    s = run_sweep(config, Path(args.out).expanduser(), progress=not args.quiet)
    import jax

    if jax.process_index() != 0:  # every process holds the diagram; process 0 writes
        return 0
    print(
        f"{s['grid_points']} grid points x {config.seeds} seeds in {s['seconds']:.1f} s "
        f"({s['grid_points_per_second']:.1f} points/s); measured vs theory |log10 χ₁|: "
        f"median {s['log10_chi1_abs_err_median']:.3f}, "
        f"{s['nonfinite_chi1_points']} non-finite points"
    )
    print(
        f"wrote {args.out}/config.json, sweep.json, sweep.npz, phase.png, "
        "depth_scales.png"
    )
    return 0


def add_sweep(
    sub, out_type: Callable[[str], str], int_type: Callable[..., Callable[[str], int]]
) -> None:
    """Adds the ``sweep`` subcommand to the ``jgrad`` parser's subparsers."""
    from jgrad.nn import ACTIVATIONS

    p = sub.add_parser(
        "sweep",
        help="phase diagram: measured chi_1 over a weight_var x bias_var grid vs theory",
        description=(
            "Measure chi_1 (the per-layer growth of ||dL/dz_l||^2), q^l and the "
            "input-output Jacobian of plain --depth x --width networks over a grid of "
            "weight and bias variances x --seeds networks, as one compiled program "
            "sharded over every device, next to mean-field theory; write config.json, "
            "sweep.json, sweep.npz, phase.png and depth_scales.png to --out. On a "
            "cluster, run the same command on every host after jax.distributed."
            "initialize() (README)."
        ),
    )
    p.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default="tanh",
        help="activation (default %(default)s)",
    )
    p.add_argument(
        "--weight-var",
        nargs=3,
        metavar=("MIN", "MAX", "N"),
        default=["0.5", "4.0", "24"],
        help="N weight variances from MIN > 0 to MAX (default 0.5 4.0 24)",
    )
    p.add_argument(
        "--bias-var",
        nargs=3,
        metavar=("MIN", "MAX", "N"),
        default=["0.0", "0.3", "16"],
        help="N bias variances from MIN >= 0 to MAX (default 0.0 0.3 16)",
    )
    p.add_argument(
        "--depth",
        type=int_type("--depth", 1, 30),
        default=30,
        help="layers, >= 2 (default %(default)s)",
    )
    p.add_argument(
        "--width",
        type=int_type("--width", 1, 64),
        default=64,
        help="layer width, >= 1 (default %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=int_type("--seeds", 1, 2),
        default=2,
        help="networks per grid point, >= 1 (default %(default)s)",
    )
    p.add_argument(
        "--n-inputs",
        type=int_type("--n-inputs", 1, 8),
        default=8,
        help="inputs per network, >= 1 (default %(default)s)",
    )
    p.add_argument(
        "--chunk-size",
        type=int_type("--chunk-size", 1, 64),
        default=None,
        help="grid points per run of the compiled program, a multiple of the "
        "device count (default: the whole grid at once)",
    )
    p.add_argument(
        "--seed",
        type=int_type("--seed", 0, 0),
        default=0,
        help="seed of the networks, >= 0 (default %(default)s)",
    )
    p.add_argument(
        "--out",
        type=out_type,
        default="runs/sweep",
        help="output folder, created if missing (default %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sweep, parser=p)
