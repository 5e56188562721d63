"""Exact layer-to-layer Jacobians J_l = d h_l / d h_{l-1} along the forward trajectory.

Closed forms are used where they are cheap: a dense layer's Jacobian is ``w^T``, an elementwise
activation's is ``diag(phi'(h))`` (kept as a vector), and a dense layer followed by an
activation fuses to ``diag(phi'(a)) w^T`` (a row scaling, no matmul). A residual block is
``shortcut + scale * J_block`` with ``J_block`` again in closed form where possible. Any other
layer (layer norm, conv, pooling, a layer the user wrote, a flax module) falls back to an exact
autodiff Jacobian, forward or reverse mode by shape, computed in chunks of basis vectors when
``chunk_size`` is given (``jax.jacrev`` has no chunking; jax#11319).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._network import check_input, refuse_split_repeats, resolve_net
from jgrad.analyze._nonfinite import (
    NonFinite,
    first_true,
    no_nonfinite,
    nonfinite_record,
    reports_nonfinite,
)
from jgrad.analyze._precision import full_precision
from jgrad.nn._layer import split_keys, walk

__all__ = ["Jacobians", "layer_jacobians", "jacobian"]


class Jacobians(NamedTuple):
    """Per-layer Jacobians along one forward trajectory.

    A ``jgrad.nn.repeat`` layer of n blocks (``mlp(..., stacked=True)``) is held as ONE
    entry of ``mats`` and ``hs``, its blocks' Jacobians and outputs stacked on a leading
    axis n (no tuple of n matrices); the layers are still numbered l = 1..L in order,
    L counting the n blocks. Every consumer (:func:`log_singular_values`,
    :func:`jacobian_product`, :func:`input_products`, :func:`output_products`,
    :func:`log_abs_det`) scans over a stacked entry.

    Attributes:
        mats: a tuple with one entry per segment: a matrix
            ``d h_l / d h_{l-1}`` of shape ``(size(h_l), size(h_{l-1}))`` (inputs and
            outputs flattened, row-major), or for a repeat layer an ``(n, N, N)`` array,
            its n blocks' Jacobians in order. Without repeat layers, L matrices.
        hs: a tuple of the representations ``h_0 = x, h_1, ..., h_L`` (h_L the output),
            one entry per segment after ``x``: a repeat layer's ``(n, *shape)``, its
            blocks' outputs in order (the entry after a 3-D ``mats`` entry).
        first_nonfinite: int32 scalar, the first k with a non-finite entry in ``h_k`` or
            ``J_k``, or -1 when the whole trajectory is finite.
        nonfinite: a :class:`NonFinite`: ``forward`` the first k with a NaN or inf in
            ``h_k`` (k = 0 the input x), ``backward`` the first layer l (l = 1..L, in
            forward order) whose ``J_l`` holds a NaN or inf although ``h_(l-1)`` was
            finite; -1 for none. A ``J_l`` computed from a non-finite ``h_(l-1)`` is
            all NaN.
    """

    mats: tuple
    hs: tuple
    first_nonfinite: jax.Array
    nonfinite: NonFinite = no_nonfinite()

    def stacked(self) -> jax.Array:
        """The Jacobians as one ``(L, m, n)`` array (all layers must have equal shapes;
        a repeat layer's stacked entry is concatenated, not unstacked)."""
        shapes = {m.shape[-2:] for m in self.mats}
        if len(shapes) != 1:
            raise ValueError(
                f"`stacked()` needs Jacobians of one shape, got {sorted(shapes)}. Use "
                "`mats` (a tuple) for networks whose width changes."
            )
        return jnp.concatenate([m if m.ndim == 3 else m[None] for m in self.mats])


# ----------------------------------------------------------------------------------------
# Chunked autodiff Jacobian


@full_precision
def jacobian(
    fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """The exact Jacobian of ``fn`` at ``x`` as a matrix, optionally in chunks.

    Inputs and outputs are flattened (row-major), so the result has shape
    ``(fn(x).size, x.size)`` whatever their shapes. Forward mode (one JVP per input basis
    vector) or reverse mode (one VJP per output basis vector); ``"auto"`` picks the one with
    fewer passes. With ``chunk_size`` the basis vectors are pushed ``chunk_size`` at a time
    (``lax.map``), so peak memory is ``chunk_size`` tangents instead of all of them, which
    ``jax.jacrev``/``jax.jacfwd`` cannot do.

    Args:
        fn: a function of one array.
        x: the point.
        mode: ``"auto"``, ``"fwd"`` or ``"rev"``.
        chunk_size: basis vectors per batch; None pushes all at once (fastest, most memory).

    Returns:
        The ``(m, n)`` Jacobian.

    Raises:
        ValueError: ``x`` is not a non-empty real floating-point array (a list, an
            integer or complex array), or ``mode``/``chunk_size`` is invalid.

    Examples:
        >>> import jax.numpy as jnp
        >>> J = jacobian(lambda v: jnp.sin(v) * v[0], jnp.arange(1.0, 4.0), chunk_size=2)
        >>> J.shape
        (3, 3)
    """
    _checks.choice("mode", mode, ("auto", "fwd", "rev"))
    if chunk_size is not None:
        _checks.positive_int("chunk_size", chunk_size)
    _check_point(x)
    shape = x.shape

    def flat_fn(v):
        return jnp.ravel(fn(v.reshape(shape)))

    xf = jnp.ravel(x)
    out = jax.eval_shape(flat_fn, xf)
    n, m = xf.size, out.shape[0]
    if mode == "auto":
        mode = "fwd" if n <= m else "rev"

    def over_basis(f, basis):
        # vmap when unchunked (no loop to compile eagerly), lax.map in chunks otherwise
        if chunk_size is None or chunk_size >= basis.shape[0]:
            return jax.vmap(f)(basis)
        return jax.lax.map(f, basis, batch_size=chunk_size)

    if mode == "fwd":
        push = lambda t: jax.jvp(flat_fn, (xf,), (t,))[1]  # noqa: E731
        return over_basis(push, jnp.eye(n, dtype=xf.dtype)).T
    _, pull = jax.vjp(flat_fn, xf)
    return over_basis(lambda c: pull(c)[0], jnp.eye(m, dtype=out.dtype))


def _check_point(x) -> None:
    """Raises ValueError unless ``x`` is a non-empty real floating-point array."""
    dtype = getattr(x, "dtype", None)
    if isinstance(x, (list, tuple)) or dtype is None or not hasattr(x, "shape"):
        raise ValueError(
            f"`x` must be an array (jax or NumPy), got {type(x).__name__}. Convert it "
            "with jnp.asarray(x, jnp.float32)."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`x` must be a real floating-point array (float32 or float64), got dtype "
            f"{jnp.dtype(dtype)}: a Jacobian is taken with respect to real inputs. "
            "Convert it with x.astype(jnp.float32)."
        )
    if 0 in tuple(x.shape):
        raise ValueError(
            f"`x` must hold at least one value, got shape {tuple(x.shape)}. Pass the "
            "point at which to take the Jacobian."
        )


# ----------------------------------------------------------------------------------------
# Closed forms. A Jacobian is either ("diag", d) for diag(d) or ("full", M).


def _to_full(j):
    kind, v = j
    return jnp.diag(v) if kind == "diag" else v


def _compose(a, b):
    """a @ b for Jacobians in either form (a applied after b)."""
    (ka, va), (kb, vb) = a, b
    if ka == "diag" and kb == "diag":
        return ("diag", va * vb)
    if ka == "diag":
        return ("full", va[:, None] * vb)
    if kb == "diag":
        return ("full", va * vb[None, :])
    return ("full", va @ vb)


def _add(a, b):
    if a[0] == "diag" and b[0] == "diag":
        return ("diag", a[1] + b[1])
    return ("full", _to_full(a) + _to_full(b))


def _layer_jacobian(layer, p, h, *, train, key, chunk_size):
    """(J, y) for one layer at input h (one example, or the whole batch as one input)."""
    info = layer.info
    if info.kind == "dense" and h.ndim == 1:
        return ("full", p["w"].T), layer.apply(p, h)
    if info.kind == "elementwise":
        act = info.activation
        return ("diag", jnp.ravel(act.deriv(h))), act.fn(h)
    if info.kind == "residual" and h.ndim == 1:
        jb, yb = _layer_jacobian(
            info.block,
            p["block"],
            h,
            train=train,
            key=key,
            chunk_size=chunk_size,
        )
        scale = info.scale
        jb = (jb[0], scale * jb[1])
        if "proj" in p:
            w = p["proj"]["w"]
            return _add(("full", w.T), jb), h @ w + scale * yb
        return _add(("diag", jnp.ones(h.size, h.dtype)), jb), h + scale * yb
    if info.kind == "serial":
        return _serial_jacobian(
            info.layers, p, h, train=train, key=key, chunk_size=chunk_size
        )

    def f(v):
        return layer.apply(p, v, train=train, key=key)

    y = f(h)
    return ("full", jacobian(f, h, chunk_size=chunk_size)), y


def _serial_jacobian(layers, params, h, *, train, key, chunk_size):
    keys = split_keys(key, len(layers))
    j = None
    for layer, p, k in zip(layers, params, keys, strict=True):
        jl, h = _layer_jacobian(layer, p, h, train=train, key=k, chunk_size=chunk_size)
        j = jl if j is None else _compose(jl, j)
    return j, h


def _all_finite(v):
    """``(r,)`` bool: every entry of ``v[i]`` is finite (``v`` stacked on axis 0)."""
    return jnp.all(jnp.isfinite(v.reshape(v.shape[0], -1)), axis=1)


# ----------------------------------------------------------------------------------------


@reports_nonfinite("layer")
@full_precision
def layer_jacobians(
    net: Any,
    params: Sequence[Any],
    x: jax.Array,
    *,
    blocks: bool = True,
    train: bool = False,
    key: jax.Array | None = None,
    batch_jacobian: bool = False,
    chunk_size: int | None = None,
) -> Jacobians:
    """The exact Jacobians ``J_l = d h_l / d h_{l-1}`` of one example's forward pass.

    For the network's spectra or norms, :func:`input_output_spectrum` (``d y / d x``),
    :func:`output_spectra` and :func:`output_norms` (every ``d y / d h_l``) are the
    faster route: they pull the rows of the product back through each layer (under
    ``vmap`` a dense layer is one matrix product shared by the batch) and form no
    per-layer Jacobian. This function builds L explicit matrices per example, and
    ``log_singular_values`` of them multiplies those as separate per-example products;
    use it for the Jacobians themselves, a layer pair, or ``method="qr"``.

    With ``blocks=True`` (default) the representations ``h_l`` are the outputs of the blocks
    that ``net.block_ends`` names (for ``jgrad.nn.mlp``: after each activation, so
    ``J_l = diag(phi'(a_l)) W_l^T``), plus the network output when the last layer is not a
    block end (a readout); with ``blocks=False`` every layer is one step. Either way the
    product ``J_L ... J_1`` is ``d y / d x``. A ``jgrad.nn.repeat`` layer (``mlp(...,
    stacked=True)``) is a block of its own whose n blocks give n Jacobians, held as one
    stacked ``(n, N, N)`` entry of ``mats`` (see :class:`Jacobians`) and computed by one
    scan over its stacked params, so the program does not grow with n.

    Batch norm in train mode couples the examples of a batch, so a per-example Jacobian does
    not exist. Pass the whole batch as ``x`` with ``batch_jacobian=True``: the batch is then
    one input of size ``B * n`` and ``J_l`` is the ``(B n, B n)`` batch Jacobian analysed by
    Yang et al. (2019), whose gradients explode with depth at any width.

    Args:
        net: a ``jgrad.nn.serial``/``mlp``/``resnet`` network, a Layer, or a sequence of
            Layers, flax ``linen.Module``s and functions ``fn(params, x)``.
        params: the network's params: one entry per layer (flax modules: their variables).
        x: ONE example (vmap for a batch), or the whole batch with ``batch_jacobian=True``.
        blocks: Jacobians between block outputs (True) or between every layer (False).
        train: apply the layers in train mode (dropout masks, batch statistics).
        key: dropout key, split once per layer as ``serial`` does.
        batch_jacobian: treat ``x`` as one input (required for batch norm in train mode).
        chunk_size: basis vectors per batch in the autodiff fallback (memory bound).

    Returns:
        A :class:`Jacobians` (``mats``, ``hs``, ``first_nonfinite``, ``nonfinite``).

    Raises:
        ValueError: ``net`` is not a network, ``params`` does not fit it (another width
            or input size), ``x`` is not one float example (the message shows the
            ``vmap``; with ``batch_jacobian=True``, not a float batch), ``key`` is not a
            PRNG key, batch norm in train mode without ``batch_jacobian=True``, or
            ``blocks=False`` with a repeat layer whose block has several layers (its
            blocks are scanned as units).

    References:
        Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz, "A Mean Field Theory of Batch
        Normalization", ICLR 2019, arXiv:1902.08129.

    Examples:
        >>> import jax, jgrad
        >>> net = jgrad.nn.mlp(3, 4, activation="tanh")
        >>> _, params = net.init(jax.random.key(0), (4,))
        >>> jac = jgrad.analyze.layer_jacobians(net, params, jax.numpy.linspace(-1, 1, 4))
        >>> [j.shape for j in jac.mats], int(jac.first_nonfinite)
        ([(4, 4), (4, 4), (4, 4)], -1)
        >>> deep = jgrad.nn.mlp(1000, 4, activation="tanh", stacked=True)
        >>> _, dp = deep.init(jax.random.key(0), (4,))
        >>> jac = jgrad.analyze.layer_jacobians(deep, dp, jax.numpy.linspace(-1, 1, 4))
        >>> [j.shape for j in jac.mats], jac.stacked().shape
        ([(4, 4), (999, 4, 4)], (1000, 4, 4))
    """
    _checks.boolean("blocks", blocks)
    _checks.boolean("train", train)
    _checks.boolean("batch_jacobian", batch_jacobian)
    _checks.prng_key("key", key, optional=True)
    from jgrad.analyze import _repeat  # it builds on this module's closed forms

    layers, params, ends = resolve_net(net, params, blocks)
    refuse_split_repeats(layers, blocks)
    if chunk_size is not None:
        _checks.positive_int("chunk_size", chunk_size)
    couples = any(sub.info.couples_examples for sub in walk(*layers))
    if train and not batch_jacobian and couples:
        raise ValueError(
            "`batch_jacobian` must be True for a network with batch norm in train mode "
            "(train=True), got False: batch norm couples the examples, so there is no "
            "per-example Jacobian. Pass the whole batch as `x` with batch_jacobian=True, "
            "or use train=False."
        )
    check_input("layer_jacobians", net, params, x, one_example=not batch_jacobian)
    x = jnp.asarray(x)
    if batch_jacobian and x.ndim < 2:
        raise ValueError(
            f"`x` must be a batch (B, ...) with batch_jacobian=True, got shape {x.shape}."
        )
    keys = split_keys(key, len(layers))
    mats, hs = [], [x[None]]  # per segment, stacked (a repeat layer: over its blocks)
    stacked = []  # per segment: a repeat layer's
    start = 0
    h = x
    for end in ends:
        seg = slice(start, end + 1)
        start = end + 1
        if layers[seg][0].info.kind == "repeat":  # a segment of its own
            block = layers[seg][0].info.block
            p, k = params[seg][0], keys[seg][0]
            traj = _repeat.forward_trajectory(block, p, h, train=train, key=k)
            mats.append(
                _repeat.block_jacobians(block, p, h, hs=traj.hs, train=train, key=k)
            )
            hs.append(traj.hs)
            stacked.append(True)
            h = traj.hs[-1]
            continue
        j = None
        for layer, p, k in zip(layers[seg], params[seg], keys[seg], strict=True):
            jl, h = _layer_jacobian(
                layer, p, h, train=train, key=k, chunk_size=chunk_size
            )
            j = jl if j is None else _compose(jl, j)
        mats.append(_to_full(j)[None])
        hs.append(h[None])
        stacked.append(False)
    # one flag per block output (h) and per Jacobian (m), over the stacked segments
    bad_h = jnp.concatenate([~_all_finite(v) for v in hs])
    bad_m = jnp.concatenate([~_all_finite(m) for m in mats])
    first = first_true(bad_h | jnp.concatenate([jnp.zeros(1, bool), bad_m]))
    # J_l is computed at h_(l-1): NaN once some h_j, j <= l-1, is non-finite
    dep = jnp.cumsum(bad_h[:-1]) > 0
    bad_j = bad_m & ~dep
    record = nonfinite_record(
        first_true(bad_h), first_true(bad_j, jnp.arange(1, bad_j.shape[0] + 1))
    )
    out_m, out_h, i = [], [x], 0
    for m, v, rep in zip(mats, hs[1:], stacked, strict=True):
        r = m.shape[0]
        m = jnp.where(dep[i : i + r, None, None], jnp.nan, m)
        out_m.append(m if rep else m[0])
        out_h.append(v if rep else v[0])
        i += r
    return Jacobians(tuple(out_m), tuple(out_h), first, record)
