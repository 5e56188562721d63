"""Phase diagrams: gradient growth measured over a (weight_var, bias_var) grid x seeds,
as ONE jitted, vmapped, sharded program, beside the mean-field theory at every point.

:func:`phase_probe` is the measurement for ONE network: a plain fully-connected network
of one activation, weights ``N(0, weight_var / width)`` and biases ``N(0, bias_var)``
drawn as unit normals and scaled inside the function, so the variances are traced
arguments. :func:`phase_diagram` vmaps it over seeds and grid points (no recompilation
per point or per grid of the same shape), runs the grid in chunks of one compiled
program, and shards every chunk over the devices of a mesh (``jgrad/theory/_shard.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import _checks
from jgrad.theory import _shard

__all__ = ["PhaseDiagram", "PhaseProbe", "phase_diagram", "phase_probe"]


class PhaseProbe(NamedTuple):
    """What :func:`phase_probe` measures on one network of depth L.

    Layer l = 1..L has pre-activation ``z_l = phi(z_(l-1)) W_l + b_l`` (``z_1 = x W_1 +
    b_1``; index 0 stands for the input x); the loss is ``<g, z_L>`` summed over the
    inputs, with g a unit Gaussian cotangent.

    Attributes:
        log10_grad_norm: (L+1,) log10 ||dL/dz_l||, l = 0 (the input) .. L, Frobenius norm
            over the inputs (``jgrad.analyze.layer_grad_norms``: never underflows;
            ``-inf`` only for an exactly zero gradient, NaN where computed from a NaN or
            inf).
        q: (L,) mean squared pre-activation ``q^l = ||z_l||^2 / (n_inputs width)``,
            l = 1..L (the length that converges to q*).
        log10_jac_mean_sq: () log10 of the mean squared singular value of the
            input-output Jacobian ``d z_L / d x`` at the first input
            (``jgrad.analyze.input_output_spectrum``: one rescaled sweep and one SVD,
            stable at any depth). The mean squares of ``d z_L / d z_l`` at every depth
            are estimated by ``log10_grad_norm`` (unit Gaussian cotangent:
            ``E ||dL/dz_l||^2 = sum over inputs of ||d z_L / d z_l||_F^2``).
        finite: () bool, every forward value and gradient norm is finite (an
            overflow or NaN makes it False; an exactly zero gradient does not).
    """

    log10_grad_norm: jax.Array
    q: jax.Array
    log10_jac_mean_sq: jax.Array
    finite: jax.Array


class PhaseDiagram(NamedTuple):
    """A measured phase diagram with the theory at every point.

    Shapes: W = ``len(weight_vars)``, B = ``len(bias_vars)``, S seeds, L = depth. Arrays
    are NumPy, the whole diagram on every process.

    Attributes:
        weight_vars: (W,) the weight variances sigma_w^2 (rows).
        bias_vars: (B,) the bias variances sigma_b^2 (columns).
        chi1: (W, B) measured chi_1: the per-layer growth of ||dL/dz_l||^2, the
            geometric mean over layers l = 1..L-1 and seeds of ``||dL/dz_l||^2 /
            ||dL/dz_(l+1)||^2``, i.e. ``10 ** (2 (log10_grad_norm[1] -
            log10_grad_norm[L]) / (L - 1))`` averaged in log over seeds; 0 where a
            gradient is exactly zero; NaN where some seed's value is NaN or inf.
        chi1_finite: (W, B) bool, ``chi1`` is a finite number (not NaN or inf).
        log10_grad_norm: (W, B, S, L+1) :attr:`PhaseProbe.log10_grad_norm` per network.
        q: (W, B, S, L) :attr:`PhaseProbe.q`.
        log10_jac_mean_sq: (W, B, S) :attr:`PhaseProbe.log10_jac_mean_sq`.
        finite: (W, B, S) :attr:`PhaseProbe.finite`.
        theory: ``jgrad.theory.mean_field`` at every point, a ``MeanField`` of (W, B)
            arrays, or None with ``theory=False``.
    """

    weight_vars: np.ndarray
    bias_vars: np.ndarray
    chi1: np.ndarray
    chi1_finite: np.ndarray
    log10_grad_norm: np.ndarray
    q: np.ndarray
    log10_jac_mean_sq: np.ndarray
    finite: np.ndarray
    theory: Any = None


def _check_net(activation: Any, depth: Any, width: Any, n_inputs: Any):
    from jgrad.nn import ACTIVATIONS

    _checks.choice("activation", activation, ACTIVATIONS)
    depth = _checks.positive_int("depth", depth, "Pass e.g. depth=30.")
    if depth < 2:
        raise ValueError(
            f"`depth` must be at least 2 (chi_1 is the ratio between consecutive "
            f"layers), got {depth}. Pass e.g. depth=30."
        )
    width = _checks.positive_int("width", width, "Pass e.g. width=64.")
    n_inputs = _checks.positive_int("n_inputs", n_inputs, "Pass e.g. n_inputs=8.")
    return depth, width, n_inputs


def _scaled_dense(width: int):
    """``z = sqrt(weight_var / width) * (h @ w) + sqrt(bias_var) * b`` with params
    ``{"w": (width, width) unit normals, "b": (width,) unit normals, "sw", "sb": ()}``.

    The scales are parameters of their own, so under ``vmap`` over grid points the
    unit-normal weights stay one array shared by every point (common random numbers)
    and each layer is ONE matmul over all points' activations, instead of a scaled
    copy of the weights per point."""
    from jgrad.nn import Layer, LayerInfo
    from jgrad.nn._layer import check_apply, lead

    def init(key, in_shape):
        params = {
            "w": jax.random.normal(key, (in_shape[-1], width), jnp.float32),
            "b": jnp.zeros((width,), jnp.float32),
            "sw": jnp.ones((), jnp.float32),
            "sb": jnp.zeros((), jnp.float32),
        }
        return (width,), params

    def apply(params, x, *, train=False, key=None, return_state=False):
        check_apply(x, train, key, return_state)
        y = x @ params["w"]
        y = params["sw"] * y + lead(params["sb"] * params["b"], y.ndim)
        return (y, params) if return_state else y

    return Layer(init, apply, LayerInfo(in_rank=1))


@functools.lru_cache(maxsize=32)
def _network(activation: str, depth: int, width: int):
    from jgrad import nn

    block = nn.serial(nn.elementwise(activation), _scaled_dense(width))
    return nn.serial(_scaled_dense(width), nn.repeat(block, depth - 1))


def phase_probe(
    activation: str, *, depth: int, width: int, n_inputs: int = 8
) -> Callable[[jax.Array, jax.Array, jax.Array], PhaseProbe]:
    """The measurement behind a phase diagram, for ONE network: ``vmap`` it over seeds
    and grid points (:func:`phase_diagram` does).

    Args:
        activation: a name in ``jgrad.nn.ACTIVATIONS`` (static).
        depth: the number of dense layers L, >= 2.
        width: their width N (the input has N entries too).
        n_inputs: how many unit Gaussian inputs ``x`` (each ``(width,)``) the gradient
            norms and ``q`` average over.

    Returns:
        ``probe(weight_var, bias_var, key) -> PhaseProbe``, pure and traceable in all
        three arguments (scalars; ``key`` a PRNG key). It draws from ``key`` the unit
        normals of the weights, biases, inputs and output cotangent; each layer
        computes ``sqrt(weight_var / width) * (h @ w) + sqrt(bias_var) * b`` (the
        scales are parameters of their own, so under ``vmap`` over variances the
        weights stay shared and each layer is one matmul over every grid point's
        activations); it measures the network
        with ``jgrad.analyze.layer_grad_norms`` (one rescaled backward pass) and
        ``jgrad.analyze.input_output_spectrum`` (one sweep and one SVD, O(L N^3)).
        Float32.

    Raises:
        ValueError: an unknown activation (the names listed), depth < 2, width or
            n_inputs not a positive integer.

    Examples:
        >>> import jax
        >>> from jgrad.theory import phase_probe
        >>> probe = phase_probe("relu", depth=4, width=16)
        >>> keys = jax.random.split(jax.random.key(0), 3)  # three networks
        >>> p = jax.jit(jax.vmap(probe, in_axes=(None, None, 0)))(2.0, 0.0, keys)
        >>> p.log10_grad_norm.shape, p.q.shape, bool(p.finite.all())
        ((3, 5), (3, 4), True)
    """
    depth, width, n_inputs = _check_net(activation, depth, width, n_inputs)
    net = _network(activation, depth, width)

    def probe(weight_var, bias_var, key):
        from jgrad import analyze

        k_w, k_b, k_x, k_g = jax.random.split(key, 4)
        sw = jnp.sqrt(jnp.asarray(weight_var, jnp.float32) / width)
        sb = jnp.sqrt(jnp.asarray(bias_var, jnp.float32))
        w = jax.random.normal(k_w, (depth, width, width), jnp.float32)
        b = jax.random.normal(k_b, (depth, width), jnp.float32)
        sws = jnp.broadcast_to(sw, (depth,))
        sbs = jnp.broadcast_to(sb, (depth,))

        def layers(sl):
            return {"w": w[sl], "b": b[sl], "sw": sws[sl], "sb": sbs[sl]}

        params = (layers(0), ({}, layers(slice(1, None))))
        x = jax.random.normal(k_x, (n_inputs, width), jnp.float32)
        g = jax.random.normal(k_g, (n_inputs, width), jnp.float32)
        flow = analyze.layer_grad_norms(net, params, x, lambda y: jnp.sum(y * g))
        spec = analyze.input_output_spectrum(
            net, params, x[0], compress=False, svd="device"
        )
        log10_q = 2 * flow.log10_act_norm[1:] - jnp.log10(float(n_inputs * width))
        lg = flow.log10_norm
        log_jac = analyze.spectrum_stats(spec).log_mean_sq
        log10_jac = log_jac / jnp.log(jnp.asarray(10.0, jnp.float32))
        finite = (
            jnp.all(flow.forward_finite)
            & ~jnp.any(jnp.isnan(lg) | (lg == jnp.inf))
            & ~jnp.any(jnp.isnan(log10_jac) | (log10_jac == jnp.inf))
        )
        return PhaseProbe(lg, jnp.power(10.0, log10_q), log10_jac, finite)

    return probe


def _check_vars(name: str, values: Any, *, positive: bool) -> np.ndarray:
    what = "> 0" if positive else ">= 0"
    fix = (
        f"Pass a 1-D sequence of finite numbers {what}, e.g. "
        f"{name}=np.linspace({'0.5' if positive else '0.0'}, 4.0, 32)."
    )
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a 1-D sequence of numbers, got {values!r}. {fix}"
        ) from None
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}. {fix}")
    if arr.size == 0:
        raise ValueError(
            f"`{name}` must hold at least one value (a grid with no points), got an "
            f"empty sequence. {fix}"
        )
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else (arr < 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"`{name}` must hold finite numbers {what} (variances), got {name}[{i}] = "
            f"{float(arr[i])!r}. {fix}"
        )
    return arr.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _sweep_fn(
    activation: str,
    depth: int,
    width: int,
    n_inputs: int,
    mesh: jax.sharding.Mesh,
):
    """The jitted chunk program: (weight_var (C,), bias_var (C,), key data (S, ...)) ->
    a PhaseProbe of (C, S, ...) arrays, C split over ``mesh``. One per static config;
    jit caches one compilation per chunk length C and seed count S."""
    probe = phase_probe(activation, depth=depth, width=width, n_inputs=n_inputs)
    seeds = jax.vmap(probe, in_axes=(None, None, 0))
    grid = jax.vmap(seeds, in_axes=(0, 0, None))

    def run(weight_var, bias_var, key_data, impl):
        return grid(weight_var, bias_var, jax.random.wrap_key_data(key_data, impl=impl))

    rows = _shard.row_sharding(mesh)
    rep = _shard.replicated(mesh)
    return jax.jit(
        run,
        static_argnums=3,
        in_shardings=(rows, rows, rep),
        out_shardings=rows,
    )


def _progress_fn(progress: Any, total: int):
    if callable(progress):
        return progress, lambda: None
    if progress is True and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="phase diagram", unit="chunk")
        return (lambda done, _total: bar.update(1)), bar.close
    if not isinstance(progress, bool):
        raise ValueError(
            f"`progress` must be True, False or a function progress(done, total), got "
            f"{progress!r}. Pass progress=True for a progress bar."
        )
    return (lambda done, _total: None), lambda: None


def phase_diagram(
    activation: str,
    weight_vars: Any,
    bias_vars: Any,
    *,
    depth: int,
    width: int,
    seeds: int,
    key: jax.Array,
    n_inputs: int = 8,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    theory: bool = True,
    progress: bool | Callable[[int, int], None] = False,
) -> PhaseDiagram:
    """Measured chi_1, q^l and Jacobian mean squares over a (weight_var, bias_var)
    grid x seeds, and the mean-field theory at every point.

    The W x B grid (every weight_var with every bias_var), flattened row-major and
    padded to a whole number of chunks, runs through ONE jitted program of
    ``vmap(vmap(phase_probe(...)))`` (grid points x seeds) with the variances traced:
    another grid of the same shape reuses the compiled program, and a depth-L run
    measures every depth up to L at once (per-layer arrays). Network s is the same at
    every point up to the variances (common random numbers): ``probe(w, b,
    jax.random.split(key, seeds)[s])``, so the diagram is smooth and one point equals
    :func:`phase_probe` called alone. Each chunk of ``chunk_size`` points is split over
    every device of ``mesh`` (a multi-host run: call ``jax.distributed.initialize()``
    on every host first and run the same call; each host gets the whole diagram); the
    next chunk is dispatched before the previous one is copied back, and the padding
    is dropped.

    Args:
        activation: a name in ``jgrad.nn.ACTIVATIONS`` (static).
        weight_vars: (W,) sigma_w^2 values, finite and > 0.
        bias_vars: (B,) sigma_b^2 values, finite and >= 0.
        depth: the number of layers L, >= 2.
        width: their width N.
        seeds: networks per grid point, >= 1.
        key: a PRNG key, split into ``seeds`` keys.
        n_inputs: inputs per network (see :func:`phase_probe`).
        chunk_size: grid points per run of the compiled program, a multiple of the
            mesh's device count; None: the whole grid in one chunk. Memory grows
            linearly with ``chunk_size * seeds``.
        mesh: a ``jax.sharding.Mesh`` whose devices share the grid axis (split over
            the product of all its axes); None: a 1-D mesh over ``jax.devices()``.
        theory: also evaluate ``jgrad.theory.mean_field`` at every point (it
            broadcasts over the grid); False leaves ``theory`` None.
        progress: True for a tqdm bar over chunks (process 0 only), or a function
            ``progress(done, total)`` called after each chunk.

    Returns:
        A :class:`PhaseDiagram`.

    Raises:
        ValueError (before anything is traced): an unknown activation (the names
            listed); variances negative, non-finite, not 1-D or empty; depth < 2;
            width, seeds, n_inputs or chunk_size not positive integers; a chunk_size
            the mesh's device count does not divide; mesh not a Mesh; key not a PRNG
            key.

    References:
        Poole, Lahiri, Raghu, Sohl-Dickstein, Ganguli, "Exponential expressivity in
        deep neural networks through transient chaos", 2016, arXiv:1606.05340.
        Schoenholz, Gilmer, Ganguli, Sohl-Dickstein, "Deep Information Propagation",
        2017, arXiv:1611.01232.

    Examples:
        ReLU's chi_1 is weight_var / 2 (the theory's, and the measured one of 64-wide
        networks within a few percent):

        >>> import jax
        >>> from jgrad.theory import phase_diagram
        >>> d = phase_diagram("relu", [1.0, 2.0, 3.0], [0.0, 0.1],
        ...     depth=6, width=64, seeds=2, key=jax.random.key(0))
        >>> d.chi1.shape, d.q.shape, d.theory.chi1[:, 0].tolist()
        ((3, 2), (3, 2, 2, 6), [0.5, 1.0, 1.5])
        >>> d.chi1.round(2)[:, 0].tolist()
        [0.49, 0.98, 1.47]
    """
    depth, width, n_inputs = _check_net(activation, depth, width, n_inputs)
    wv = _check_vars("weight_vars", weight_vars, positive=True)
    bv = _check_vars("bias_vars", bias_vars, positive=False)
    seeds = _checks.positive_int("seeds", seeds, "Pass e.g. seeds=4.")
    _checks.prng_key("key", key)
    _checks.boolean("theory", theory)
    mesh = _shard.check_mesh("mesh", mesh)
    n_dev = mesh.devices.size
    n = wv.size * bv.size
    if chunk_size is None:
        chunk = _shard.padded_length(n, n_dev)
    else:
        chunk = _checks.positive_int("chunk_size", chunk_size, "Pass e.g. 64 or None.")
        if chunk % n_dev:
            lo = max(n_dev, chunk - chunk % n_dev)
            raise ValueError(
                f"`chunk_size` must be a multiple of the mesh's device count {n_dev} "
                f"(each device takes an equal share of a chunk), got {chunk}. Pass "
                f"chunk_size={lo} or {_shard.padded_length(chunk, n_dev)}, or None."
            )
    step, close = _progress_fn(progress, -(-n // chunk))
    n_chunks = -(-n // chunk)

    keys = jax.random.split(key, seeds)
    impl = str(jax.random.key_impl(keys)) if _is_typed(keys) else "threefry2x32"
    key_data = np.asarray(jax.random.key_data(keys) if _is_typed(keys) else keys)
    flat_w = np.repeat(wv, bv.size)
    flat_b = np.tile(bv, wv.size)
    pad = n_chunks * chunk - n
    flat_w = np.concatenate([flat_w, np.full(pad, flat_w[-1], np.float32)])
    flat_b = np.concatenate([flat_b, np.full(pad, flat_b[-1], np.float32)])

    fn = _sweep_fn(activation, depth, width, n_inputs, mesh)
    rows = _shard.row_sharding(mesh)
    key_arr = _shard.shard_rows(key_data, _shard.replicated(mesh))
    parts, pending = [], None
    try:
        for i in range(n_chunks):
            sl = slice(i * chunk, (i + 1) * chunk)
            out = fn(
                _shard.shard_rows(flat_w[sl], rows),
                _shard.shard_rows(flat_b[sl], rows),
                key_arr,
                impl,
            )
            if pending is not None:
                parts.append(_shard.to_host(pending))
                step(i, n_chunks)
            pending = out
        parts.append(_shard.to_host(pending))
        step(n_chunks, n_chunks)
    finally:
        close()
    probes = jax.tree.map(
        lambda *xs: np.concatenate(xs)[:n].reshape(wv.size, bv.size, *xs[0].shape[1:]),
        *parts,
    )
    return PhaseDiagram(
        weight_vars=wv,
        bias_vars=bv,
        **_chi1(probes.log10_grad_norm, depth),
        log10_grad_norm=probes.log10_grad_norm,
        q=probes.q,
        log10_jac_mean_sq=probes.log10_jac_mean_sq,
        finite=probes.finite,
        theory=_theory(activation, wv, bv) if theory else None,
    )


def _is_typed(key) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _chi1(log10_grad_norm: np.ndarray, depth: int) -> dict[str, np.ndarray]:
    lg = log10_grad_norm.astype(np.float64)
    with np.errstate(invalid="ignore"):
        per_seed = 2 * (lg[..., 1] - lg[..., depth]) / (depth - 1)
        per_seed = np.where(np.isposinf(lg[..., 1]), np.nan, per_seed)
        log10_chi1 = per_seed.mean(axis=-1)
    with np.errstate(over="ignore"):
        chi1 = np.power(10.0, log10_chi1)
    return {"chi1": chi1, "chi1_finite": np.isfinite(chi1)}


def _theory(activation: str, wv: np.ndarray, bv: np.ndarray):
    """``jgrad.theory.mean_field`` on the grid (it broadcasts: one jitted vmap inside)."""
    from jgrad.theory import mean_field  # the theory core: jgrad/theory/_mean_field.py

    out = mean_field(activation, wv[:, None], bv[None, :])
    return jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (wv.size, bv.size)), out
    )
